//! One tree round: the root's and a member's side of the protocol, and the final check of the written images.

use super::*;

/// After every writer of the tree finished: each pipe above fd 2 must have a reader
/// and a writer inside the tree (a pipe to the outside cannot be reconnected).
pub fn check_images(images: &[(i32, PathBuf)], shm: &[ShmGroup]) -> Result<(), String> {
    let mut ends: HashMap<u64, (bool, bool)> = HashMap::new();
    let mut pipes: Vec<(i32, i32, u64)> = Vec::new();
    let mut socks: Vec<(i32, torpor_image::meta::FdMeta)> = Vec::new();
    for (pid, img) in images {
        let r = ImageReader::open(img).map_err(|e| format!("{}: {e}", img.display()))?;
        for g in shm {
            for &(p, start) in g.members.iter().filter(|m| m.0 == *pid) {
                let ok = r.meta().regions.iter().any(|reg| {
                    reg.start == start
                        && reg.end - reg.start == g.len
                        && reg.kind == torpor_image::meta::RegionKind::SharedAnon
                });
                if !ok {
                    let _ = p;
                    return Err(CHANGED.to_string());
                }
            }
        }
        for f in &r.meta().fds {
            // A copy of the launch's stdio is restored as a copy of the new launch's.
            if f.launch.is_some() {
                continue;
            }
            if matches!(
                f.kind,
                FdKind::UnixStream
                    | FdKind::UnixDgram
                    | FdKind::UnixSeqpacket
                    | FdKind::UnixDgramNamed
                    | FdKind::UnixListen
                    | FdKind::Tcp
                    | FdKind::TcpListen
            ) {
                socks.push((*pid, f.clone()));
                continue;
            }
            if f.kind != FdKind::Pipe {
                continue;
            }
            let acc = f.flags as i32 & libc::O_ACCMODE;
            let e = ends.entry(f.pipe_ino).or_default();
            e.0 |= acc != libc::O_WRONLY;
            // A read end of a pipe without writers stands for the (closed) write end.
            e.1 |= acc != libc::O_RDONLY || f.pipe_no_writers;
            pipes.push((*pid, f.fd, f.pipe_ino));
        }
    }
    check_sockets(&socks)?;
    for (pid, fd, ino) in pipes {
        if fd > 2 && ends.get(&ino) != Some(&(true, true)) {
            return Err(format!(
                "process {pid} fd {fd} is a pipe (pipe:[{ino}]) whose other end is outside the checkpointed process tree; such pipes are not supported"
            ));
        }
    }
    Ok(())
}

/// Marks the pipe read ends without a writer left anywhere that still hold data (the
/// output of a command substitution whose child exited before its parent read it):
/// `poll` reports `POLLHUP` on them without consuming anything. Runs with the whole tree
/// stopped, after `probe_no_writers` (which sees only empty ones). Pause-safe.
pub fn probe_hangup(fds: &mut [FdSnap]) {
    for s in fds.iter_mut() {
        if s.no_writers != 0
            || s.mode & libc::S_IFMT != libc::S_IFIFO
            || s.flags & libc::O_ACCMODE == libc::O_WRONLY
        {
            continue;
        }
        let mut p = libc::pollfd {
            fd: s.fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll of one of our own fds with a zero timeout.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        if n == 1 && p.revents & libc::POLLHUP != 0 {
            s.no_writers = 1;
        }
    }
}

static ROUND_SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Request ids of tree rounds (`torpor checkpoint` uses ids below 2^30).
const ROUND_ID_BASE: i32 = 0x5452_0000;

/// Whether a request id is a tree round's.
pub fn is_round_id(id: i32) -> bool {
    id & !0xffff == ROUND_ID_BASE
}

fn generation_of(tmp: &Path) -> u64 {
    // .tmp-gen-000007-<pid>
    tmp.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix(".tmp-gen-"))
        .and_then(|n| n.split('-').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A process of the tree at the cut (everything stopped): a live member, or a zombie
/// (a member or a child that exited during the round, or before it).
#[derive(Debug, Clone, Copy)]
struct CutProc {
    pid: i32,
    slot: usize,
    st: RawStat,
    live: bool,
}

/// How often the root asks a member that has not reached the step it waits for again
/// (a fork child whose manager thread did not exist yet, an exec'd one whose new agent
/// just started).
const NOTIFY_EVERY_NS: u64 = 5_000_000;
/// How long a listed process may run without an agent (in the middle of exec) before
/// the round gives up on it.
const NO_AGENT_NS: u64 = 2_000_000_000;
/// The round failed on a process without an agent ([`RootRound::explain`] names it).
pub const NO_AGENT_LATE: &str = "a process in the tree has no torpor agent (statically linked, LD_PRELOAD removed, or a program that never joins a tree); the process tree cannot be checkpointed";

/// The root's side of a tree round.
///
/// Every descendant is listed in a slot of the barrier page. Members that exit before
/// they stopped are left out of the waits (they are recorded at the cut as what they
/// are then: a zombie of their parent with its wait status, or nothing once reaped);
/// children forked or exec'd while the round runs are listed and asked to join it
/// until, with everything listed stopped, no new descendant appears. The round then
/// holds one consistent cut of the tree.
pub struct RootRound {
    pub marks: Marks,
    pub pipes_fd: i32,
    pub proc_fd: i32,
    dir: PathBuf,
    me: ProcInfo,
    id: i32,
    request_sig: i32,
    /// Per slot: when it was listed, when it was last asked, whether it left the round
    /// (exited before it stopped).
    listed_at: Box<[u64; MAX_TREE]>,
    notified: Box<[u64; MAX_TREE]>,
    gone: Box<[bool; MAX_TREE]>,
    /// The processes at the cut (capacity reserved: filled during the pause).
    cut: Vec<CutProc>,
    /// A process that had no agent for too long.
    no_agent: i32,
    shm: Vec<ShmGroup>,
    copies: Vec<ShmCopy>,
    /// Open files of the tree, to find the descriptions several processes share.
    files: FileTable,
    /// Every pid that existed before the tree was listed (sorted).
    before: Vec<i32>,
    bar: Option<Barrier>,
    /// `<dir>/.tree-failed`, NUL-terminated: a member that failed before it could
    /// reach the barrier page leaves its reason there.
    failed_file: Vec<u8>,
}

/// The base name of `pid`'s executable.
fn exe_of(pid: i32) -> String {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default()
}

impl RootRound {
    /// Lists the tree, refuses what cannot be restored, publishes the round and asks
    /// every member to join it. `None` when the process has no descendants.
    pub fn prepare(
        cfg: &Config,
        pending: &torpor_image::store::Pending,
    ) -> Result<Option<RootRound>, String> {
        let me = sys::getpid();
        let before = all_pids();
        let desc = descendants(me);
        if desc.is_empty() {
            return Ok(None);
        }
        if desc.len() >= MAX_TREE {
            return Err(format!("more than {} processes in the tree", MAX_TREE - 1));
        }
        for p in desc.iter().filter(|p| p.state != b'Z') {
            // A process in the middle of exec gets its agent in a moment; these never do.
            if !has_agent(p.pid) && crate::identity::never_member(&exe_of(p.pid)) {
                return Err(format!(
                    "process {} ({}) in the tree {NO_AGENT} (a program that never joins a tree); the process tree cannot be checkpointed",
                    p.pid, p.comm
                ));
            }
        }
        let mut all: Vec<i32> = vec![me];
        all.extend(desc.iter().filter(|p| p.state != b'Z').map(|p| p.pid));
        let shm = shared_memory_groups(&all)?;
        let files = FileTable::for_tree(&all);
        write_launch(&cfg.dir);
        let me_info = stat(me).ok_or("cannot read /proc/self/stat")?;
        let (marks, pipes_fd) =
            open_dirs(pending.path()).ok_or("cannot open the pending generation directory")?;
        let proc_fd = sys_open(b"/proc\0", libc::O_RDONLY | libc::O_DIRECTORY);
        note_round_fds(&[marks.dir, pipes_fd, proc_fd]);
        let id = ROUND_ID_BASE | (ROUND_SEQ.fetch_add(1, SeqCst) & 0xffff) as i32;
        let mut round = RootRound {
            marks,
            pipes_fd,
            proc_fd,
            dir: cfg.dir.clone(),
            me: me_info,
            id,
            request_sig: cfg.request_sig,
            listed_at: Box::new([0; MAX_TREE]),
            notified: Box::new([0; MAX_TREE]),
            gone: Box::new([false; MAX_TREE]),
            cut: Vec::with_capacity(MAX_TREE),
            no_agent: 0,
            before,
            bar: Barrier::create(pending.path()),
            failed_file: CString::new(cfg.dir.join(FAILED_FILE).as_os_str().as_bytes())
                .map(|c| c.into_bytes_with_nul())
                .unwrap_or_default(),
            shm,
            copies: Vec::new(),
            files,
        };
        if proc_fd < 0 || round.bar.is_none() {
            round.close();
            return Err("cannot open /proc or create the tree barrier page".into());
        }
        if !round.shm.is_empty() {
            let _ = std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
                .create(pending.path().join("shm"));
        }
        let _ = std::fs::remove_file(cfg.dir.join(FAILED_FILE));
        if let Err(e) = write_round(&cfg.dir, id, pending.path(), &round.shm) {
            round.close();
            return Err(format!("writing the tree round file: {e}"));
        }
        round.copies = my_copies(&cfg.dir, pending.path());
        let now = sys::now_ns();
        for p in &desc {
            if let Some(i) = round.bar.as_ref().and_then(|b| b.add(p.pid)) {
                round.listed_at[i] = now;
                if p.state == b'Z' {
                    round.gone[i] = true;
                } else {
                    round.notified[i] = now;
                    notify(p.pid, round.request_sig, id);
                }
            }
        }
        Ok(Some(round))
    }

    /// Waits until every listed process reached `want` or left the round (exited
    /// before it stopped), asking the slow ones again; pause-safe.
    fn wait_slots(&mut self, want: u32) -> Result<(), &'static str> {
        let Some(bar) = &self.bar else {
            return Err(ABANDONED);
        };
        let w = bar.words();
        let t0 = sys::now_ns();
        loop {
            if w.abort.load(SeqCst) != 0 {
                return Err(ABANDONED);
            }
            let seen = w.progress.load(SeqCst);
            let n = (w.count.load(SeqCst) as usize).min(MAX_TREE);
            let now = sys::now_ns();
            let mut waiting = false;
            for i in 0..n {
                if self.gone[i] {
                    continue;
                }
                let st = w.state[i].load(SeqCst);
                if st >= want {
                    continue;
                }
                let pid = w.pids[i].load(SeqCst);
                if matches!(proc_state(pid), None | Some(b'Z') | Some(b'X')) {
                    if st >= ST_STOPPED {
                        // Stopped at the cut, then killed: its image cannot be written.
                        return Err(EXITED);
                    }
                    // Exited before it stopped: what it is at the cut is read then.
                    self.gone[i] = true;
                    continue;
                }
                waiting = true;
                if now - self.listed_at[i] > NO_AGENT_NS && !catches_raw(pid, crate::PARK_SIGNAL) {
                    self.no_agent = pid;
                    return Err(NO_AGENT_LATE);
                }
                if now - self.notified[i] > NOTIFY_EVERY_NS {
                    self.notified[i] = now;
                    notify(pid, self.request_sig, self.id);
                }
            }
            if !waiting {
                return Ok(());
            }
            if now - t0 > BARRIER_TIMEOUT_NS {
                return Err("a process of the tree did not answer within 20 s");
            }
            if self.failed_file.len() > 1 && exists(&self.failed_file) {
                return Err(ABANDONED);
            }
            sys::futex_wait_shared(&w.progress, seen, 2_000_000);
        }
    }

    /// With every listed process stopped (or gone): lists the descendants that are
    /// not listed yet (forked while the round ran) and asks them to join. Returns how
    /// many it found. Pause-safe: only pids that did not exist when the round began
    /// are read.
    fn list_new(&mut self) -> Result<usize, &'static str> {
        let Some(bar) = &self.bar else {
            return Err(ABANDONED);
        };
        let w = bar.words();
        let me = self.me.pid;
        let mut found = [0i32; 64];
        let mut nfound = 0usize;
        let listed = |pid: i32| -> bool {
            let n = (w.count.load(SeqCst) as usize).min(MAX_TREE);
            (0..n).any(|i| w.pids[i].load(SeqCst) == pid)
        };
        let before = &self.before;
        crate::fds::for_each_num(self.proc_fd, |pid| {
            if nfound >= found.len() || pid == me || before.binary_search(&pid).is_ok() {
                return;
            }
            if listed(pid) || found[..nfound].contains(&pid) {
                return;
            }
            let Some(s) = stat_full(pid) else { return };
            if s.writer || s.state == b'X' {
                return;
            }
            if s.ppid == me || listed(s.ppid) || found[..nfound].contains(&s.ppid) {
                found[nfound] = pid;
                nfound += 1;
            }
        });
        let now = sys::now_ns();
        for &pid in &found[..nfound] {
            let Some(i) = bar.add(pid) else {
                return Err("more than 255 processes in the tree");
            };
            self.listed_at[i] = now;
            self.notified[i] = now;
            self.gone[i] = false;
            notify(pid, self.request_sig, self.id);
        }
        Ok(nfound)
    }

    /// Records the tree at the cut: live members (stopped) with their parent, group and
    /// session as they are now, and zombies with their wait status. Pause-safe.
    fn take_cut(&mut self) -> Result<(), &'static str> {
        let Some(bar) = &self.bar else {
            return Err(ABANDONED);
        };
        let w = bar.words();
        self.cut.clear();
        let n = (w.count.load(SeqCst) as usize).min(MAX_TREE);
        for i in 0..n {
            let pid = w.pids[i].load(SeqCst);
            let live = w.state[i].load(SeqCst) >= ST_STOPPED;
            match stat_full(pid) {
                Some(st) if (live || st.state == b'Z') && self.cut.len() < self.cut.capacity() => {
                    self.cut.push(CutProc {
                        pid,
                        slot: i,
                        st,
                        live,
                    });
                }
                // Stopped, then killed: its image cannot be written.
                None if live => return Err(EXITED),
                // Alive but never stopped (its pid was taken again?): not a cut.
                Some(st) if !live && st.state != b'X' && st.state != b'Z' => return Err(CHANGED),
                // Reaped by its parent before the cut: not part of it.
                _ => {}
            }
        }
        Ok(())
    }

    /// Before the pause: waits until every member is ready to stop (their preparation
    /// is not part of the pause).
    pub fn before_pause(&mut self) -> Result<(), &'static str> {
        self.wait_slots(ST_READY)
    }

    /// The pause began: every member stops now.
    pub fn pause_begins(&mut self) {
        if let Some(bar) = &self.bar {
            bar.set_phase(PH_STOP);
        }
    }

    pub fn after_stop(&mut self) -> Result<(), &'static str> {
        loop {
            self.wait_slots(ST_STOPPED)?;
            if self.list_new()? == 0 {
                break;
            }
            if !self.shm.is_empty() {
                // A new child maps the shared memory its parent does, outside the groups
                // listed when the round began.
                return Err(CHANGED);
            }
        }
        self.take_cut()?;
        self.files.scan(self.proc_fd, self.me.pid);
        for c in &self.cut {
            if c.live {
                self.files.scan(self.proc_fd, c.pid);
            }
        }
        self.files.group()?;
        if let Some(bar) = &self.bar {
            bar.set_phase(PH_GO);
        }
        copy_shared(&self.copies)
    }

    pub fn after_fork(&mut self) -> Result<(), &'static str> {
        self.wait_slots(ST_FORKED)?;
        if let Some(bar) = &self.bar {
            bar.set_phase(PH_RELEASE);
        }
        Ok(())
    }

    pub fn abort(&self) {
        if let Some(bar) = &self.bar {
            bar.abort();
        }
    }

    /// A fuller message for a failure of this round (after the release).
    pub fn explain(&self, e: &str) -> String {
        if e == NO_AGENT_LATE && self.no_agent > 0 {
            let comm = stat(self.no_agent).map(|p| p.comm).unwrap_or_default();
            return format!(
                "process {} ({comm}) in the tree {NO_AGENT} (statically linked, LD_PRELOAD removed, or a program that never joins a tree); the process tree cannot be checkpointed",
                self.no_agent
            );
        }
        e.to_string()
    }

    /// After this process's writer succeeded: waits for every member's writer, checks
    /// the tree's pipes and commits one manifest for the whole tree.
    pub fn commit(&mut self, pending: &torpor_image::store::Pending) -> Result<(), String> {
        let t0 = sys::now_ns();
        let live: Vec<CutProc> = self.cut.iter().copied().filter(|c| c.live).collect();
        let done: Vec<CString> = live.iter().map(|c| mark_name("done", c.pid)).collect();
        let failed: Vec<CString> = live.iter().map(|c| mark_name("failed", c.pid)).collect();
        let dead = |pid: i32| matches!(proc_state(pid), None | Some(b'Z') | Some(b'X'));
        loop {
            let mut waiting = false;
            for (i, c) in live.iter().enumerate() {
                if self.marks.has(&done[i]) {
                    continue;
                }
                if self.marks.has(&failed[i]) {
                    let msg = std::fs::read_to_string(
                        pending.path().join(failed[i].to_string_lossy().as_ref()),
                    )
                    .unwrap_or_default();
                    let comm = stat(c.pid).map(|p| p.comm).unwrap_or_default();
                    return Err(format!("process {} ({comm}): {}", c.pid, msg.trim()));
                }
                if dead(c.pid) {
                    // A member may exit once released; its writer reports for it.
                    let writer = self
                        .bar
                        .as_ref()
                        .map_or(0, |b| b.words().writer[c.slot].load(SeqCst));
                    if writer <= 0 || dead(writer) {
                        // The writer may have reported just before it exited.
                        if self.marks.has(&done[i]) {
                            continue;
                        }
                        return Err(format!("process {} exited while being written", c.pid));
                    }
                }
                waiting = true;
            }
            if !waiting {
                break;
            }
            if sys::now_ns() - t0 > 600_000_000_000 {
                return Err("a process of the tree was not written within 10 minutes".into());
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let me = self.me.pid;
        let mut images = vec![(me, pending.path().join(format!("proc-{me}.img")))];
        for c in &live {
            images.push((
                c.pid,
                pending
                    .path()
                    .join(format!("p{}/proc-{}.img", c.pid, c.pid)),
            ));
        }
        check_images(&images, &self.shm)?;
        if let Ok(rd) = std::fs::read_dir(pending.path()) {
            for e in rd.flatten() {
                if e.file_name().as_bytes().starts_with(b".") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        // Members that joined late have no directory of their own yet if they exited
        // before they stopped; only live members have images.
        let mut processes = vec![ManifestProcess {
            pid: me,
            image: format!("proc-{me}.img"),
            ppid: self.me.ppid,
            pgid: self.me.pgid,
            sid: self.me.sid,
            zombie: None,
        }];
        for c in &self.cut {
            processes.push(ManifestProcess {
                pid: c.pid,
                image: if c.live {
                    format!("p{}/proc-{}.img", c.pid, c.pid)
                } else {
                    String::new()
                },
                ppid: c.st.ppid,
                pgid: c.st.pgid,
                sid: c.st.sid,
                zombie: (!c.live).then_some(c.st.exit_code),
            });
        }
        // Parents before children, as the restore creates them.
        order_parents_first(&mut processes[1..], me);
        let bytes = images
            .iter()
            .filter_map(|(_, i)| std::fs::metadata(i).ok())
            .map(|m| m.len())
            .sum();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        pending
            .commit(Manifest {
                generation: 0,
                attempt: pending.attempt(),
                time_unix: sys::unix_time(),
                hostname: host.trim().to_string(),
                processes,
                bytes,
                shared: self
                    .shm
                    .iter()
                    .enumerate()
                    .map(|(i, g)| SharedMemory {
                        file: format!("shm/{i}"),
                        offset: g.offset,
                        len: g.len,
                        members: g.members.clone(),
                    })
                    .collect(),
                open_files: self.files.shared(),
                ..Default::default()
            })
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    pub fn close(&mut self) {
        if let Some(bar) = self.bar.take() {
            // Members still waiting (the root failed before the release) give up now.
            if bar.words().phase.load(SeqCst) != PH_RELEASE {
                bar.abort();
            }
            bar.unmap();
        }
        let _ = std::fs::remove_file(self.dir.join(FAILED_FILE));
        close(self.marks.dir);
        close(self.pipes_fd);
        close(self.proc_fd);
        let _ = std::fs::remove_file(self.dir.join(ROUND_FILE));
        remove_launch(&self.dir);
    }
}

/// Orders the processes below `root` so that each comes after its parent (depth first,
/// by pid among siblings), as `descendants` lists them.
fn order_parents_first(procs: &mut [ManifestProcess], root: i32) {
    let mut out: Vec<ManifestProcess> = Vec::with_capacity(procs.len());
    let mut frontier = vec![root];
    let mut rest: Vec<ManifestProcess> = procs.to_vec();
    while let Some(p) = frontier.pop() {
        let mut kids: Vec<ManifestProcess> = Vec::new();
        rest.retain(|c| {
            if c.ppid == p {
                kids.push(c.clone());
                false
            } else {
                true
            }
        });
        kids.sort_by_key(|c| c.pid);
        for c in kids {
            frontier.push(c.pid);
            out.push(c);
        }
    }
    // Anything not reachable (should not happen) keeps its place at the end.
    out.extend(rest);
    procs.clone_from_slice(&out);
}

/// A member's side of a tree round.
pub struct MemberRound {
    pub marks: Marks,
    pub pipes_fd: i32,
    tmp: PathBuf,
    dir: PathBuf,
    root: [i32; 1],
    bar: Option<Barrier>,
    /// This process's slot on the barrier page.
    slot: usize,
    copies: Vec<ShmCopy>,
}

/// The member was asked for a round that does not list it (a late request): nothing
/// to do, and nothing to report.
pub const NOT_LISTED: &str = "not listed in the tree round";

impl MemberRound {
    /// Joins round `id`: a sub-directory `p<pid>/` of the pending generation `tmp`.
    pub fn prepare(
        id: i32,
        dir: &Path,
        tmp: &Path,
        attempt: u32,
    ) -> Result<(MemberRound, torpor_image::store::Pending), String> {
        let _ = id;
        let me = sys::getpid();
        let Some(bar) = Barrier::open(tmp) else {
            return Err(NOT_LISTED.into());
        };
        let w = bar.words();
        let Some(slot) = bar.slot_of(me) else {
            bar.unmap();
            return Err(NOT_LISTED.into());
        };
        if w.abort.load(SeqCst) != 0
            || w.phase.load(SeqCst) == PH_RELEASE
            || w.state[slot].load(SeqCst) >= ST_STOPPED
        {
            // Over, or answered already (by this process before it exec'd the program
            // it runs now, which cannot be: stopped processes do not exec).
            bar.unmap();
            return Err(NOT_LISTED.into());
        }
        read_launch(dir);
        let sub = tmp.join(format!("p{me}"));
        // It may exist: this process joined before it exec'd, and joins again.
        if let Err(e) =
            std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
                .create(&sub)
        {
            if e.kind() != std::io::ErrorKind::AlreadyExists {
                bar.unmap();
                return Err(format!("{}: {e}", sub.display()));
            }
        }
        let Some((marks, pipes_fd)) = open_dirs(tmp) else {
            bar.unmap();
            return Err("cannot open the pending generation directory".into());
        };
        note_round_fds(&[marks.dir, pipes_fd]);
        let pending = torpor_image::store::Pending::for_member(sub, generation_of(tmp), attempt);
        Ok((
            MemberRound {
                marks,
                pipes_fd,
                tmp: tmp.to_path_buf(),
                dir: dir.to_path_buf(),
                root: [ROOT_PID.load(SeqCst)],
                bar: Some(bar),
                slot,
                copies: my_copies(dir, tmp),
            },
            pending,
        ))
    }

    /// Marks this process's slot `state`, then waits for the root's `phase`.
    fn step(&self, state: u32, phase: u32) -> Result<(), &'static str> {
        let Some(bar) = &self.bar else {
            return Err(ABANDONED);
        };
        bar.arrive(self.slot, state);
        bar.wait(&bar.words().phase, phase, &self.root, b"")
    }

    /// Before the pause: ready, then wait until the root says stop.
    pub fn before_pause(&mut self) -> Result<(), &'static str> {
        self.step(ST_READY, PH_STOP)
    }

    pub fn after_stop(&mut self) -> Result<(), &'static str> {
        self.step(ST_STOPPED, PH_GO)?;
        copy_shared(&self.copies)
    }

    /// This process's writer is `pid` (it reports for the process if it exits after
    /// the release).
    pub fn writer_forked(&self, pid: i64) {
        if let Some(bar) = &self.bar {
            bar.words().writer[self.slot].store(pid as i32, SeqCst);
        }
    }

    pub fn after_fork(&mut self) -> Result<(), &'static str> {
        self.step(ST_FORKED, PH_RELEASE)
    }

    pub fn abort(&self) {
        if let Some(bar) = &self.bar {
            bar.abort();
        }
    }

    /// Tells the root how this process's part ended (a writer that succeeded reported
    /// `.done` itself).
    pub fn finish(&mut self, out: &crate::manager::Outcome) {
        let me = sys::getpid();
        if let crate::manager::Outcome::Failed(e) = out {
            let _ = std::fs::write(self.tmp.join(format!(".failed-{me}")), e);
            let _ = std::fs::write(self.dir.join(FAILED_FILE), format!("process {me}: {e}"));
            self.abort();
        }
        if let Some(bar) = self.bar.take() {
            bar.unmap();
        }
        close(self.marks.dir);
        close(self.pipes_fd);
    }
}

/// In a member's writer, once its image is written (`err`: `None`) or failed: the
/// marker the root waits for, `<pending>/.done-PID` or `.failed-PID`. The writer
/// reports rather than the member, which may exit once released.
pub fn writer_report(image_dir: &Path, pid: i32, err: Option<&str>) {
    let Some(tmp) = image_dir.parent() else {
        return;
    };
    match err {
        None => {
            let _ = std::fs::write(tmp.join(format!(".done-{pid}")), b"");
        }
        Some(e) => {
            let _ = std::fs::write(tmp.join(format!(".failed-{pid}")), e);
        }
    }
}
