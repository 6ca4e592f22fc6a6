//! Removing what a store no longer needs: old generations (keeping the chains that kept
//! incremental generations build on) and temporaries that can never be committed.

use std::fs;
use std::path::Path;

use super::{gen_name, Store, StoreError};

impl Store {
    /// Removes temporaries that can never be committed: those of a generation that is
    /// already complete, of a process that no longer exists, or of this process (a round
    /// of ours that was cut off before it could clean up; only one round runs at a time).
    pub fn clean_temporaries(&self) {
        let newest = self.generations().ok().and_then(|g| g.last().copied());
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else {
                continue;
            };
            if name.starts_with(".del-gen-") {
                // A pruned generation whose removal was cut off.
                let _ = fs::remove_dir_all(e.path());
                continue;
            }
            let Some(rest) = name.strip_prefix(".tmp-gen-") else {
                continue;
            };
            // `<gen>-<pid>-<start>` (or `<gen>-<pid>` from older writers). Any temporary
            // with our pid goes, also one of an earlier incarnation of this program (a
            // restored program has the original's pid and a new start time): its writer
            // is dead, unless it runs on a node that was given up, whose round is lost
            // anyway.
            let mut parts = rest.splitn(3, '-');
            let gen = parts.next().and_then(|g| g.parse::<u64>().ok());
            let pid = parts.next().and_then(|p| p.parse::<u32>().ok());
            let start_ok = parts.next().is_none_or(|s| s.parse::<u64>().is_ok());
            let stale = match (gen, pid) {
                (Some(g), Some(p)) if start_ok => {
                    newest.is_some_and(|n| g <= n)
                        || p == std::process::id()
                        || !Path::new(&format!("/proc/{p}")).exists()
                }
                _ => true,
            };
            if stale {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }

    /// Deletes all but the newest `keep` complete generations and stale temporaries of
    /// processes that no longer exist.
    /// Generations an incremental generation depends on are kept as long as it is.
    pub fn prune(&self, keep: usize) -> Result<(), StoreError> {
        let gens = self.generations()?;
        let latest = self.latest();
        if gens.len() > keep {
            let mut kept: Vec<u64> = gens[gens.len() - keep..].to_vec();
            kept.extend(latest);
            let mut i = 0;
            while i < kept.len() {
                // A generation whose manifest cannot be read cannot be restored: it needs
                // no parent.
                if let Some(p) = self.parent_of(kept[i]) {
                    if !kept.contains(&p) {
                        kept.push(p);
                    }
                }
                i += 1;
            }
            // Newest first: a generation is never left without the one it builds on,
            // even by a prune that is cut off.
            for &n in gens[..gens.len() - keep].iter().rev() {
                if !kept.contains(&n) {
                    // Renamed out of the way first: a removal cut off half-way must not
                    // leave a generation that looks complete with files missing.
                    let doomed =
                        self.dir
                            .join(format!(".del-{}-{}", gen_name(n), std::process::id()));
                    if fs::rename(self.gen_dir(n), &doomed).is_ok() {
                        let _ = fs::remove_dir_all(&doomed);
                    }
                }
            }
        }
        self.clean_temporaries();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::{manifest, tmp};
    use crate::store::Manifest;

    #[test]
    fn commit_makes_latest_and_prune_keeps_n() {
        let s = Store::new(tmp("commit"));
        for _ in 0..4 {
            let p = s.begin(0).unwrap();
            p.commit(manifest()).unwrap();
        }
        assert_eq!(s.latest(), Some(4));
        s.prune(2).unwrap();
        assert_eq!(s.generations().unwrap(), vec![3, 4]);
    }

    /// A kept incremental generation keeps its chain (parent, grandparent, ...) until a
    /// newer full generation makes it unnecessary.
    #[test]
    fn prune_keeps_what_kept_generations_depend_on() {
        let s = Store::new(tmp("chain"));
        let with_parent = |p: Option<u64>| Manifest {
            parent: p,
            ..manifest()
        };
        // 1 full, 2 on 1, 3 on 2, 4 full, 5 on 4.
        let parents = [None, Some(1), Some(2), None, Some(4)];
        let expect: [&[u64]; 5] = [&[1], &[1, 2], &[1, 2, 3], &[1, 2, 3, 4], &[4, 5]];
        for (p, want) in parents.into_iter().zip(expect) {
            s.begin(0).unwrap().commit(with_parent(p)).unwrap();
            s.prune(2).unwrap();
            assert_eq!(s.generations().unwrap(), want);
        }
        assert_eq!(s.parent_of(5), Some(4));
        assert_eq!(s.parent_of(4), None);
    }

    #[test]
    fn cut_off_temporaries_are_cleaned_at_the_next_round() {
        let s = Store::new(tmp("clean"));
        s.begin(0).unwrap().commit(manifest()).unwrap();
        // A dead writer's leftover for the next generation, one of an old generation,
        // and one of a live process (pid 1) for a generation not yet complete.
        for name in [
            ".tmp-gen-000002-999999999",
            ".tmp-gen-000001-1",
            ".tmp-gen-000009-1",
        ] {
            fs::create_dir_all(s.dir().join(name).join("files")).unwrap();
        }
        let p = s.begin(0).unwrap();
        assert!(!s.dir().join(".tmp-gen-000002-999999999").exists());
        assert!(!s.dir().join(".tmp-gen-000001-1").exists());
        assert!(s.dir().join(".tmp-gen-000009-1").exists());
        p.commit(manifest()).unwrap();
        assert_eq!(s.latest(), Some(2));
    }
}
