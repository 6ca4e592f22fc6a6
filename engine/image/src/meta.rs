//! The metadata of one process image: everything but the page contents, serialized as JSON.
//!
//! New fields must be `#[serde(default)]` so that images written by older minor versions
//! still parse; removing or changing the meaning of a field needs a new major version.

use serde::{Deserialize, Serialize};

/// Everything about a process except its page contents.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ProcessMeta {
    /// Format version that wrote this metadata, "major.minor".
    pub format: String,
    /// Who and when.
    pub origin: Origin,
    /// Memory-descriptor fields restored with `PR_SET_MM_MAP`.
    pub mm: MmFields,
    /// The auxiliary vector as (type, value) pairs.
    pub auxv: Vec<(u64, u64)>,
    /// Placement and identity of the kernel's vdso/vvar mappings.
    pub vdso: Vdso,
    /// Signal dispositions, one per signal that is not SIG_DFL.
    pub sigactions: Vec<SigAction>,
    /// Threads; exactly one has `is_main`.
    pub threads: Vec<ThreadMeta>,
    /// Address-space regions in address order.
    pub regions: Vec<Region>,
    /// Extents of saved memory: page runs stored in the data section.
    pub chunks: Vec<Chunk>,
    /// Open file descriptors.
    pub fds: Vec<FdMeta>,
    /// Process-wide attributes.
    pub process: ProcessAttrs,
    /// Addresses inside the agent that the restorer fills in.
    pub agent: AgentAddrs,
    /// POSIX timers (timer_create), recreated with their ids.
    #[serde(default)]
    pub timers: Vec<TimerMeta>,
    /// Interval timers (setitimer): real, virtual, prof as (interval_ns, value_ns).
    #[serde(default)]
    pub itimers: Vec<(u64, u64)>,
    /// POSIX record locks (fcntl F_SETLK) held at the checkpoint.
    #[serde(default)]
    pub locks: Vec<LockMeta>,
    /// Incremental images (format 3.0): the image of the same process in the generation
    /// this one builds on. `None`: a full image, every page is described here.
    #[serde(default)]
    pub parent: Option<ParentRef>,
}

/// The link from an incremental image to the image it builds on.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ParentRef {
    /// Generation number of the parent (a sibling `gen-NNNNNN` directory).
    pub generation: u64,
    /// The `checksum` of the parent generation's manifest: a parent that was replaced or
    /// damaged no longer matches and the chain is refused.
    pub manifest_checksum: String,
    /// The parent image, relative to the parent generation directory.
    pub image: String,
}

/// One POSIX record lock, re-acquired on `fd` before the program resumes.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LockMeta {
    pub fd: i32,
    pub write: bool,
    pub start: i64,
    /// Last byte locked, or -1 for "to end of file".
    pub end: i64,
}

/// One POSIX timer.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TimerMeta {
    pub id: i32,
    pub clock: i32,
    pub signo: i32,
    /// SIGEV_* notification (0 signal, 1 none, 4 thread id).
    pub notify: i32,
    pub tid: i32,
    pub value: u64,
    pub interval_ns: u64,
    /// Time left until the next expiry at the checkpoint (0 = disarmed).
    pub value_ns: u64,
}

/// Provenance of an image.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Origin {
    pub pid: i32,
    pub ppid: i32,
    pub uid: u32,
    pub gid: u32,
    pub hostname: String,
    pub kernel: String,
    /// Seconds since the epoch when the threads were paused.
    pub time_unix: f64,
    pub exe: String,
    pub argv: Vec<String>,
    /// Generation number and job attempt that wrote this image.
    pub generation: u64,
    pub attempt: u32,
    /// Whether the process was already living in a pid namespace created by a restore.
    #[serde(default)]
    pub in_restore_pidns: bool,
}

/// The fields of `struct prctl_mm_map` (except auxv and exe_fd).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct MmFields {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
}

/// The vdso and vvar mappings of the checkpointed process.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Vdso {
    /// Start and length of `[vvar]` (plus `[vvar_vclock]` when present), 0 if absent.
    pub vvar_start: u64,
    pub vvar_len: u64,
    pub vdso_start: u64,
    pub vdso_len: u64,
    /// xxh3-64 of the vdso bytes, to detect a different kernel.
    pub vdso_hash: u64,
}

/// One signal disposition, in the kernel's `struct sigaction` layout.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct SigAction {
    pub signo: i32,
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

/// One thread's kernel-side state; registers live in memory (see docs/image-format.md).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ThreadMeta {
    pub tid: i32,
    pub is_main: bool,
    /// Address of the saved mini-context (callee-saved registers, rsp, rip) in the image memory.
    pub ctx_addr: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    /// `set_tid_address` value; for glibc threads this is `&pthread->tid`.
    pub clear_tid: u64,
    pub robust_head: u64,
    pub robust_len: u64,
    pub rseq_addr: u64,
    pub rseq_len: u32,
    pub rseq_sig: u32,
    pub name: String,
}

/// What a region is, which decides how it is saved and recreated.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RegionKind {
    /// Private anonymous memory (heap arenas, thread stacks, bss tails).
    Anon,
    /// The `[heap]` (brk area).
    Heap,
    /// The main thread's `[stack]`, recreated growing down.
    Stack,
    /// Private file mapping: the file is mapped again and modified pages overlaid.
    FilePrivate,
    /// Shared file mapping: mapped again, nothing saved (the file holds the data).
    FileShared,
    /// Shared anonymous memory, memfd or /dev/shm whose file is gone: whole contents saved.
    SharedAnon,
    /// A mapping of a file that was deleted: contents saved, recreated as anonymous memory.
    DeletedFile,
}

/// One virtual memory area.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Region {
    pub start: u64,
    pub end: u64,
    /// PROT_* bits.
    pub prot: u32,
    pub kind: RegionKind,
    /// Name from /proc/self/maps (path, `[heap]`, `[anon:...]`, ...).
    pub name: String,
    /// Offset into the file for file mappings.
    #[serde(default)]
    pub offset: u64,
    /// Identity of the mapped file, checked before restoring.
    #[serde(default)]
    pub file: Option<FileId>,
    /// Pages of this region stored in the image.
    pub pages_saved: u64,
    /// Pages the program had touched that were all zeros: not stored, left as fresh
    /// (zero) memory by the restore. Format 2.0.
    #[serde(default)]
    pub pages_zero: u64,
    /// Extra flags (`dontfork`, `wipeonfork`, `hugepage`, `growsdown`, `noreserve`).
    #[serde(default)]
    pub flags: Vec<String>,
    /// For shared writable file mappings: the file's contents captured in the
    /// generation (path relative to the generation directory).
    #[serde(default)]
    pub captured: Option<String>,
    /// Incremental images (format 3.0): only the pages in `written` are described by this
    /// image; every other page of the region is what the parent image chain holds for
    /// that address. `false`: the region is described fully here.
    #[serde(default)]
    pub inherit: bool,
    /// With `inherit`: the page ranges `[start, end)` (sorted, disjoint, page aligned,
    /// inside the region) that this image describes: each page is in a chunk, or was
    /// all zeros (anonymous memory) or not modified (private file mappings: the file's
    /// bytes), as in a full image. In JSON the compact run list of [`runs`] (3.1; 3.0
    /// wrote `[[start, end], ...]`, which is still read).
    #[serde(default, with = "runs")]
    pub written: Vec<[u64; 2]>,
}

/// How a file is recognised as unchanged.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_sec: i64,
    pub mtime_nsec: i64,
}

/// How a chunk's bytes are stored.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Codec {
    /// The page bytes themselves, at a page-aligned file offset.
    Raw,
    /// An LZ4 block (no frame, no size prefix) that decodes to exactly `len` bytes.
    /// Stored only when smaller than the pages; at any file offset (ADR 0005).
    Lz4,
}

/// Saved pages stored contiguously in the data section: a run of consecutive pages at
/// `vaddr`, or (format 3.1) a gathered chunk whose bytes fill the page runs `runs`, in
/// order (small runs of many places, compressed together).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(into = "ChunkWire", try_from = "ChunkWire")]
pub struct Chunk {
    /// Virtual address of the first page.
    pub vaddr: u64,
    /// Uncompressed length in bytes (a multiple of the page size).
    pub len: u64,
    /// Byte offset of the stored bytes in the image file (page aligned for `raw`).
    pub offset: u64,
    /// Stored length in bytes.
    pub stored_len: u64,
    pub codec: Codec,
    /// xxh3-64 of the stored bytes.
    pub checksum: u64,
    /// Empty: the chunk holds the `len` bytes from `vaddr` on. Otherwise a gathered
    /// chunk: the page ranges `[start, end)` (sorted, disjoint, page aligned, adding up to
    /// `len`) that its decoded bytes fill one after the other; `vaddr` is the first
    /// range's start.
    pub runs: Vec<[u64; 2]>,
}

impl Chunk {
    /// The contiguous pieces of this chunk: (vaddr, len, offset of the piece in the
    /// chunk's decoded bytes).
    pub fn pieces(&self) -> Vec<(u64, u64, u64)> {
        if self.runs.is_empty() {
            return vec![(self.vaddr, self.len, 0)];
        }
        let mut skip = 0u64;
        self.runs
            .iter()
            .map(|&[a, b]| {
                let n = b.saturating_sub(a);
                let at = skip;
                skip = skip.saturating_add(n);
                (a, n, at)
            })
            .collect()
    }
}

/// How a [`Chunk`] is written in JSON: a gathered chunk has `runs` and no `vaddr`, so
/// that a 3.0 reader (which requires `vaddr`) refuses the image instead of reading the
/// chunk as one run.
#[derive(Serialize, Deserialize)]
struct ChunkWire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vaddr: Option<u64>,
    len: u64,
    offset: u64,
    stored_len: u64,
    codec: Codec,
    checksum: u64,
    #[serde(default, with = "runs", skip_serializing_if = "Vec::is_empty")]
    runs: Vec<[u64; 2]>,
}

impl From<Chunk> for ChunkWire {
    fn from(c: Chunk) -> Self {
        ChunkWire {
            vaddr: c.runs.is_empty().then_some(c.vaddr),
            len: c.len,
            offset: c.offset,
            stored_len: c.stored_len,
            codec: c.codec,
            checksum: c.checksum,
            runs: c.runs,
        }
    }
}

impl TryFrom<ChunkWire> for Chunk {
    type Error = String;
    fn try_from(w: ChunkWire) -> Result<Self, String> {
        let vaddr = match (w.vaddr, w.runs.first()) {
            (Some(v), None) => v,
            (None, Some(r)) => r[0],
            _ => return Err("a chunk has either vaddr or runs".into()),
        };
        Ok(Chunk {
            vaddr,
            len: w.len,
            offset: w.offset,
            stored_len: w.stored_len,
            codec: w.codec,
            checksum: w.checksum,
            runs: w.runs,
        })
    }
}

/// Page ranges `[start, end)` in JSON (format 3.1): one flat array of numbers counted in
/// pages: the first range's start page (address / 4096), its length, then for each
/// further range the gap from the previous range's end and its length. So 2,600
/// isolated pages of a 1 GiB mapping cost about 13 KB instead of 90 KB. Reading also
/// accepts the 3.0 form `[[start, end], ...]` (byte addresses).
pub mod runs {
    use serde::de::{Error as _, SeqAccess, Visitor};
    use serde::ser::{Error as _, SerializeSeq};
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::PAGE_SIZE;

    pub fn serialize<S: Serializer>(v: &[[u64; 2]], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len() * 2))?;
        let mut prev = 0u64;
        for (i, &[a, b]) in v.iter().enumerate() {
            if a % PAGE_SIZE != 0 || b % PAGE_SIZE != 0 || b < a || a < prev {
                return Err(S::Error::custom(format!(
                    "page range {a:#x}-{b:#x} is not sorted and page aligned"
                )));
            }
            let first = if i == 0 {
                a / PAGE_SIZE
            } else {
                (a - prev) / PAGE_SIZE
            };
            seq.serialize_element(&first)?;
            seq.serialize_element(&((b - a) / PAGE_SIZE))?;
            prev = b;
        }
        seq.end()
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Elem {
        Num(u64),
        Pair([u64; 2]),
    }

    struct V;

    impl<'de> Visitor<'de> for V {
        type Value = Vec<[u64; 2]>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a page run list")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            let (mut pairs, mut nums) = (false, Vec::new());
            while let Some(e) = seq.next_element::<Elem>()? {
                match e {
                    Elem::Pair(p) if nums.is_empty() => {
                        pairs = true;
                        out.push(p);
                    }
                    Elem::Num(n) if !pairs => nums.push(n),
                    _ => return Err(A::Error::custom("page runs mix two forms")),
                }
            }
            if nums.len() % 2 != 0 {
                return Err(A::Error::custom("page runs: odd number of counts"));
            }
            let mut at = 0u64;
            for (i, p) in nums.chunks_exact(2).enumerate() {
                let pages = |n: u64| n.checked_mul(PAGE_SIZE);
                let start = if i == 0 {
                    pages(p[0])
                } else {
                    pages(p[0]).and_then(|g| at.checked_add(g))
                };
                let end = start.and_then(|s| pages(p[1]).and_then(|l| s.checked_add(l)));
                let (Some(s), Some(e)) = (start, end) else {
                    return Err(A::Error::custom("page runs overflow"));
                };
                out.push([s, e]);
                at = e;
            }
            Ok(out)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<[u64; 2]>, D::Error> {
        d.deserialize_seq(V)
    }
}

/// What an fd refers to and how it comes back.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FdKind {
    /// 0, 1, 2: taken from the new launch.
    Stdio,
    /// A regular file reopened by path.
    File,
    /// A directory reopened by path.
    Directory,
    /// A character device that can simply be reopened (/dev/null, /dev/zero, /dev/urandom...).
    Device,
    /// A file deleted while open: contents saved with the generation.
    Deleted,
    /// One end of an anonymous pipe (`pipe_ino`); recreated once per tree with the data
    /// buffered at the checkpoint (`pipes/<ino>` in the generation). At fd 0-2 a pipe whose
    /// other end is outside the tree is treated as stdio.
    Pipe,
    /// One end of a connected, unnamed Unix stream socket pair (`pipe_ino` is this end's
    /// inode, `peer_ino` the other's); recreated with the data queued for each end
    /// (`pipes/<ino>`). A connection accepted from a listener of the tree (`sock_name` is
    /// the listener's name) is recreated by connecting to and accepting from it.
    UnixStream,
    /// A named FIFO (`path`, `pipe_ino` its inode): reopened by path with its flags; the
    /// data buffered in it at the checkpoint is written back once (`pipes/<ino>`).
    Fifo,
    /// One end of a connected, unnamed Unix datagram socket pair (`pipe_ino`, `peer_ino`
    /// as for `unix_stream`); the queued datagrams (`pipes/<ino>`: each a 4-byte
    /// little-endian length and its bytes) are sent again from the other end.
    UnixDgram,
    /// One end of a connected, unnamed Unix seqpacket socket pair: as `unix_dgram`
    /// (records kept), recreated with `socketpair(SOCK_SEQPACKET)`.
    UnixSeqpacket,
    /// A listening Unix stream socket bound to `sock_name` with `backlog`; `queued`
    /// connections were waiting to be accepted (their clients are `unix_stream` ends
    /// with `peer_ino` 0 and `peer_name` this name).
    UnixListen,
    /// A listening TCP socket on `sock_name` (`address:port`).
    TcpListen,
    /// A Unix datagram socket that is not one end of an unnamed pair: bound to
    /// `sock_name` (a path or `@name`), connected to `peer_ino` (0: not connected; the
    /// peer is a named socket of the tree), or neither (it sends with `sendto`). Bound
    /// again, its queued datagrams sent again to it from the sockets bound to their
    /// sender names (`pipes/<ino>` as for `unix_dgram`, `pipes/<ino>.from`: each
    /// datagram's sender name as a 2-byte little-endian length and the raw `sun_path`
    /// bytes, empty for an unbound sender), then connected again.
    UnixDgramNamed,
    /// One end of an established loopback TCP connection between processes of the tree
    /// (`sock_name` this end's address, `peer_name` the other's); recreated through the
    /// tree's listener on the server's port with the data queued for each end.
    Tcp,
}

/// What a restore does to the file's contents before reopening it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FileDisposition {
    /// Opened read-only: must be unchanged.
    Verify,
    /// Only appended to (or written sequentially): cut back to `size` at restore.
    Truncate,
    /// Written elsewhere: contents captured in the generation and put back.
    Captured,
    /// Nothing to do (devices, directories, stdio).
    None,
}

/// One open file descriptor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FdMeta {
    pub fd: i32,
    pub kind: FdKind,
    pub path: String,
    /// `O_*` status flags from `F_GETFL`.
    pub flags: u32,
    pub cloexec: bool,
    pub offset: i64,
    pub disposition: FileDisposition,
    #[serde(default)]
    pub file: Option<FileId>,
    /// Name of the captured copy inside the generation directory, if any.
    #[serde(default)]
    pub captured: Option<String>,
    /// Lowest fd sharing this fd's open file description (and so its offset), if any.
    #[serde(default)]
    pub dup_of: Option<i32>,
    /// For captured files: sidecar suffixes (`-journal`, `-wal`, `-shm`) that did NOT
    /// exist at the checkpoint; a restore removes them if they exist now (a hot journal
    /// left by a transaction begun after the checkpoint must not be rolled back).
    #[serde(default)]
    pub absent_sidecars: Vec<String>,
    /// For pipes: the pipe's inode number (identifies both ends across the tree); for
    /// socket pairs: this end's inode.
    #[serde(default)]
    pub pipe_ino: u64,
    /// For socket pairs: the inode of the other end.
    #[serde(default)]
    pub peer_ino: u64,
    /// For a pipe's read end: the pipe was empty and had no writer left (EOF).
    #[serde(default)]
    pub pipe_no_writers: bool,
    /// Sockets: the name this socket is bound to (a path, `@name` for an abstract Unix
    /// name, `address:port` for TCP), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sock_name: Option<String>,
    /// TCP: the peer's `address:port`; a Unix stream client whose connection was not
    /// accepted yet (`peer_ino` 0): the listener's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_name: Option<String>,
    /// Listening sockets: the backlog given to `listen`.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub backlog: u32,
    /// Listening sockets: how many connections were waiting to be accepted.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub queued: u32,
    /// A copy of the launch's stdio fd N (0-2) kept at another number (a shell saving
    /// its stdout at fd 10 around a redirection): restored as a copy of the new
    /// launch's fd N, taken before any fd is placed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch: Option<i32>,
    /// TCP sockets: options set again at restore, as (level, name, value).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sockopts: Vec<(i32, i32, i32)>,
    /// Sockets: `shutdown` already done on this end (bit 0 reading, bit 1 writing).
    #[serde(default, skip_serializing_if = "is_zero_u8")]
    pub shutdown: u8,
    /// `unix_dgram_named`: the names of the sockets that sent the datagrams queued on
    /// this one (each once; unbound senders are not listed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dgram_from: Vec<String>,
    /// `unix_dgram_named` bound to a path: the program had removed the socket file
    /// (a restore binds the path to reconnect its senders, then removes it again).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub name_unlinked: bool,
}

/// Process-wide attributes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ProcessAttrs {
    pub cwd: String,
    pub umask: u32,
    /// (resource, soft, hard).
    pub rlimits: Vec<(u32, u64, u64)>,
    /// Name of the thread-group leader (`comm`).
    pub comm: String,
}

/// Addresses of agent variables that the restorer writes.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AgentAddrs {
    /// `struct RestoreInfo` inside the agent.
    pub restore_info: u64,
}

impl ProcessMeta {
    /// Sum of the page counts saved across regions.
    pub fn pages_saved(&self) -> u64 {
        self.regions.iter().map(|r| r.pages_saved).sum()
    }

    /// Whether pages of this image come from a parent generation.
    pub fn is_incremental(&self) -> bool {
        self.parent.is_some()
    }

    /// Sum of the all-zero pages skipped across regions.
    pub fn pages_zero(&self) -> u64 {
        self.regions.iter().map(|r| r.pages_zero).sum()
    }
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

fn is_zero_u8(v: &u8) -> bool {
    *v == 0
}
