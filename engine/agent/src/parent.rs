//! Which generation the next incremental image builds on (ADR 0009): the last committed
//! generation of this process, unless a full image is due (`full_every`), the last round
//! failed or was a process-tree round, or the program was just restored.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};

use torpor_image::store::{Manifest, Store};

use crate::manager::Config;
use crate::sys;
use crate::writer::Parent;

/// The generation the next incremental image builds on (`u64::MAX`: none, the next
/// generation is full), and how many incremental generations followed the last full one.
static PARENT_GEN: AtomicU64 = AtomicU64::new(u64::MAX);
static SINCE_FULL: AtomicU32 = AtomicU32::new(0);

/// The next generation is full (a failed or tree round, a restore).
pub(crate) fn forget() {
    PARENT_GEN.store(u64::MAX, SeqCst);
}

/// A single process's round committed `generation`: the next image builds on it.
/// `store` tells whether `generation` was itself incremental.
pub(crate) fn committed(store: &Store, generation: u64) {
    match store.parent_of(generation) {
        Some(_) => SINCE_FULL.fetch_add(1, SeqCst),
        None => SINCE_FULL.swap(0, SeqCst),
    };
    PARENT_GEN.store(generation, SeqCst);
}

/// The parent of an incremental image for this round, if it may be one.
pub(crate) fn incremental_parent(cfg: &Config, store: &Store) -> Option<Parent> {
    let generation = PARENT_GEN.load(SeqCst);
    if generation == u64::MAX || SINCE_FULL.load(SeqCst) + 1 >= cfg.full_every {
        return None;
    }
    let dir = store.gen_dir(generation);
    let path = dir.join("manifest.json");
    let m = Manifest::parse(&std::fs::read(&path).ok()?, &path).ok()?;
    let me = m.processes.first().filter(|p| p.pid == sys::getpid())?;
    Some(Parent {
        link: torpor_image::meta::ParentRef {
            generation,
            manifest_checksum: m.checksum.clone()?,
            image: me.image.clone(),
        },
        image: dir.join(&me.image),
    })
}
