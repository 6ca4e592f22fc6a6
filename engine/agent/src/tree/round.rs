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

static ROUND_SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn generation_of(tmp: &Path) -> u64 {
    // .tmp-gen-000007-<pid>
    tmp.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix(".tmp-gen-"))
        .and_then(|n| n.split('-').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The root's side of a tree round.
pub struct RootRound {
    pub marks: Marks,
    pub pipes_fd: i32,
    pub proc_fd: i32,
    dir: PathBuf,
    me: ProcInfo,
    /// Live members, parents before children.
    live: Vec<ProcInfo>,
    zombies: Vec<ProcInfo>,
    shm: Vec<ShmGroup>,
    copies: Vec<ShmCopy>,
    /// Open files of the tree, to find the descriptions several processes share.
    files: FileTable,
    known: Vec<i32>,
    /// Every pid that existed before the tree was listed (sorted).
    before: Vec<i32>,
    pids: Vec<i32>,
    done: Vec<CString>,
    failed: Vec<CString>,
    bar: Option<Barrier>,
    /// `<dir>/.tree-failed`, NUL-terminated: a member that failed before it could
    /// reach the barrier page leaves its reason there.
    failed_file: Vec<u8>,
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
        let (zombies, live): (Vec<ProcInfo>, Vec<ProcInfo>) =
            desc.into_iter().partition(|p| p.state == b'Z');
        for p in &live {
            if !has_agent(p.pid) {
                return Err(format!(
                    "process {} ({}) in the tree {NO_AGENT} (statically linked, LD_PRELOAD removed, or in the middle of exec); the process tree cannot be checkpointed",
                    p.pid, p.comm
                ));
            }
        }
        let mut all: Vec<i32> = vec![me];
        all.extend(live.iter().map(|p| p.pid));
        let shm = shared_memory_groups(&all)?;
        let files = FileTable::for_tree(&all);
        write_launch(&cfg.dir);
        let me_info = stat(me).ok_or("cannot read /proc/self/stat")?;
        let (marks, pipes_fd) =
            open_dirs(pending.path()).ok_or("cannot open the pending generation directory")?;
        let proc_fd = sys_open(b"/proc\0", libc::O_RDONLY | libc::O_DIRECTORY);
        let id = 0x5452_0000 | (ROUND_SEQ.fetch_add(1, SeqCst) & 0xffff) as i32;
        let mut round = RootRound {
            marks,
            pipes_fd,
            proc_fd,
            dir: cfg.dir.clone(),
            me: me_info,
            known: live.iter().chain(&zombies).map(|p| p.pid).collect(),
            before,
            pids: live.iter().map(|p| p.pid).collect(),
            done: live.iter().map(|p| mark_name("done", p.pid)).collect(),
            failed: live.iter().map(|p| mark_name("failed", p.pid)).collect(),
            bar: Barrier::create(pending.path()),
            failed_file: CString::new(cfg.dir.join(FAILED_FILE).as_os_str().as_bytes())
                .map(|c| c.into_bytes_with_nul())
                .unwrap_or_default(),
            live,
            zombies,
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
        for &p in &round.pids {
            if !catches(p, cfg.request_sig) || !has_agent(p) {
                round.abort();
                round.close();
                return Err(format!(
                    "process {p} in the tree {NO_AGENT} right now (in the middle of exec?)"
                ));
            }
            let val = libc::sigval {
                sival_ptr: id as usize as *mut libc::c_void,
            };
            // SAFETY: sigqueue to a member of our tree with a plain value.
            if unsafe { libc::sigqueue(p, cfg.request_sig, val) } != 0 {
                round.abort();
                round.close();
                return Err(format!("cannot signal process {p} of the tree"));
            }
        }
        Ok(Some(round))
    }

    /// Waits for `word` of the barrier page to reach the number of members.
    fn wait_members(&self, word: impl Fn(&Shared) -> &AtomicU32) -> Result<(), &'static str> {
        let Some(bar) = &self.bar else {
            return Err(ABANDONED);
        };
        bar.wait(
            word(bar.words()),
            self.pids.len() as u32,
            &self.pids,
            &self.failed_file,
        )
    }

    /// Before the pause: waits until every member is ready to stop (their preparation
    /// is not part of the pause).
    pub fn before_pause(&mut self) -> Result<(), &'static str> {
        self.wait_members(|w| &w.ready)
    }

    /// The pause began: every member stops now.
    pub fn pause_begins(&mut self) {
        if let Some(bar) = &self.bar {
            bar.set_phase(PH_STOP);
        }
    }

    pub fn after_stop(&mut self) -> Result<(), &'static str> {
        self.wait_members(|w| &w.stopped)?;
        if !same_tree(self.proc_fd, self.me.pid, &self.known, &self.before) {
            return Err(CHANGED);
        }
        for p in std::iter::once(self.me.pid).chain(self.pids.iter().copied()) {
            self.files.scan(self.proc_fd, p);
        }
        self.files.group()?;
        if let Some(bar) = &self.bar {
            bar.set_phase(PH_GO);
        }
        copy_shared(&self.copies)
    }

    pub fn after_fork(&mut self) -> Result<(), &'static str> {
        self.wait_members(|w| &w.forked)?;
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

    /// After this process's writer succeeded: waits for every member's writer, checks
    /// the tree's pipes and commits one manifest for the whole tree.
    pub fn commit(&mut self, pending: &torpor_image::store::Pending) -> Result<(), String> {
        let t0 = sys::now_ns();
        loop {
            let mut waiting = false;
            for (i, p) in self.live.iter().enumerate() {
                if self.marks.has(&self.done[i]) {
                    continue;
                }
                if self.marks.has(&self.failed[i]) {
                    let msg = std::fs::read_to_string(
                        pending
                            .path()
                            .join(self.failed[i].to_string_lossy().as_ref()),
                    )
                    .unwrap_or_default();
                    return Err(format!("process {} ({}): {}", p.pid, p.comm, msg.trim()));
                }
                // SAFETY: kill with signal 0 only checks existence.
                if unsafe { libc::kill(p.pid, 0) } != 0 {
                    return Err(format!("process {} exited while being written", p.pid));
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
        for p in &self.live {
            images.push((
                p.pid,
                pending
                    .path()
                    .join(format!("p{}/proc-{}.img", p.pid, p.pid)),
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
        let entry = |p: &ProcInfo, image: String, zombie: Option<i32>| ManifestProcess {
            pid: p.pid,
            image,
            ppid: p.ppid,
            pgid: p.pgid,
            sid: p.sid,
            zombie,
        };
        let mut processes = vec![entry(&self.me, format!("proc-{me}.img"), None)];
        for p in &self.live {
            processes.push(entry(p, format!("p{}/proc-{}.img", p.pid, p.pid), None));
        }
        for z in &self.zombies {
            processes.push(entry(z, String::new(), Some(z.exit_code)));
        }
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

/// A member's side of a tree round.
pub struct MemberRound {
    pub marks: Marks,
    pub pipes_fd: i32,
    tmp: PathBuf,
    dir: PathBuf,
    root: [i32; 1],
    bar: Option<Barrier>,
    copies: Vec<ShmCopy>,
}

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
        read_launch(dir);
        let sub = tmp.join(format!("p{me}"));
        std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
            .create(&sub)
            .map_err(|e| format!("{}: {e}", sub.display()))?;
        let (marks, pipes_fd) =
            open_dirs(tmp).ok_or("cannot open the pending generation directory")?;
        let Some(bar) = Barrier::open(tmp) else {
            close(marks.dir);
            close(pipes_fd);
            return Err(format!(
                "cannot map the tree barrier page in {}",
                tmp.display()
            ));
        };
        let pending = torpor_image::store::Pending::for_member(sub, generation_of(tmp), attempt);
        Ok((
            MemberRound {
                marks,
                pipes_fd,
                tmp: tmp.to_path_buf(),
                dir: dir.to_path_buf(),
                root: [ROOT_PID.load(SeqCst)],
                bar: Some(bar),
                copies: my_copies(dir, tmp),
            },
            pending,
        ))
    }

    /// Counts this process in `arrive` (none: only waits), then waits for the root's
    /// `phase`.
    fn step(&self, arrive: impl Fn(&Shared) -> &AtomicU32, phase: u32) -> Result<(), &'static str> {
        let Some(bar) = &self.bar else {
            return Err(ABANDONED);
        };
        bar.arrive(arrive(bar.words()));
        bar.wait(&bar.words().phase, phase, &self.root, b"")
    }

    /// Before the pause: ready, then wait until the root says stop.
    pub fn before_pause(&mut self) -> Result<(), &'static str> {
        self.step(|w| &w.ready, PH_STOP)
    }

    pub fn after_stop(&mut self) -> Result<(), &'static str> {
        self.step(|w| &w.stopped, PH_GO)?;
        copy_shared(&self.copies)
    }

    pub fn after_fork(&mut self) -> Result<(), &'static str> {
        self.step(|w| &w.forked, PH_RELEASE)
    }

    pub fn abort(&self) {
        if let Some(bar) = &self.bar {
            bar.abort();
        }
    }

    /// Tells the root how this process's part ended.
    pub fn finish(&mut self, out: &crate::manager::Outcome) {
        let me = sys::getpid();
        match out {
            crate::manager::Outcome::Failed(e) => {
                let _ = std::fs::write(self.tmp.join(format!(".failed-{me}")), e);
                let _ = std::fs::write(self.dir.join(FAILED_FILE), format!("process {me}: {e}"));
                self.abort();
            }
            _ => {
                self.marks.touch(&mark_name("done", me));
            }
        }
        if let Some(bar) = self.bar.take() {
            bar.unmap();
        }
        close(self.marks.dir);
        close(self.pipes_fd);
    }
}
