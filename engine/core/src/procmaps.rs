//! Parses `/proc/<pid>/maps` lines into memory areas.

/// One line of `/proc/<pid>/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    pub shared: bool,
    pub offset: u64,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub inode: u64,
    /// Path or pseudo-name (`[heap]`, `[stack]`, `[vdso]`...); empty for anonymous memory.
    pub name: String,
}

impl Vma {
    /// PROT_* bits of the area.
    pub fn prot(&self) -> u32 {
        (self.read as u32) | ((self.write as u32) << 1) | ((self.exec as u32) << 2)
    }

    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

fn hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s, 16).ok()
}

/// Parses one maps line; `None` when it does not have the kernel's shape.
pub fn parse_line(line: &str) -> Option<Vma> {
    let mut it = line.splitn(6, ' ');
    let range = it.next()?;
    let perms = it.next()?.as_bytes();
    let offset = hex(it.next()?)?;
    let dev = it.next()?;
    let inode = it.next()?.parse().ok()?;
    let name = it.next().unwrap_or("").trim_start().to_string();
    let (s, e) = range.split_once('-')?;
    let (maj, min) = dev.split_once(':')?;
    if perms.len() < 4 {
        return None;
    }
    Some(Vma {
        start: hex(s)?,
        end: hex(e)?,
        read: perms[0] == b'r',
        write: perms[1] == b'w',
        exec: perms[2] == b'x',
        shared: perms[3] == b's',
        offset,
        dev_major: u32::from_str_radix(maj, 16).ok()?,
        dev_minor: u32::from_str_radix(min, 16).ok()?,
        inode,
        name,
    })
}

/// Parses a whole maps file, skipping malformed lines.
pub fn parse(text: &str) -> Vec<Vma> {
    text.lines().filter_map(parse_line).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_file_anon_and_special() {
        let t = "55d0c0a00000-55d0c0a02000 r--p 00000000 fe:01 1234 /usr/bin/cat\n\
                 7ffd5d3f0000-7ffd5d411000 rw-p 00000000 00:00 0                          [stack]\n\
                 7f0000000000-7f0000001000 rw-s 00000000 00:01 99 /memfd:x (deleted)\n\
                 7f0000002000-7f0000003000 ---p 00000000 00:00 0 \n";
        let v = parse(t);
        assert_eq!(v.len(), 4);
        assert_eq!(v[0].name, "/usr/bin/cat");
        assert_eq!(v[0].prot(), 1);
        assert_eq!(v[1].name, "[stack]");
        assert!(v[2].shared);
        assert_eq!(v[2].name, "/memfd:x (deleted)");
        assert_eq!(v[3].name, "");
        assert_eq!(v[3].prot(), 0);
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_line("hello").is_none());
        assert!(parse_line("zz-10 rw-p 0 00:00 0").is_none());
    }
}
