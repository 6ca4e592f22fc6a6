//! LZ4 block decoder with no allocation and no `std`: shared by restore stage 2 (which
//! includes this file with `#[path]`) and the unit tests that check it against the encoder.

/// Reads an LZ4 length continuation (bytes of 255 add up, the first other byte ends it).
#[inline(always)]
fn more_len(src: &[u8], i: &mut usize, mut n: usize) -> Option<usize> {
    loop {
        let b = *src.get(*i)?;
        *i += 1;
        n = n.checked_add(b as usize)?;
        if b != 255 {
            return Some(n);
        }
    }
}

/// Decodes one LZ4 block (no frame, no size prefix) from `src` into `dst`. Returns the
/// number of bytes written, or `None` if the block is malformed or would not fit.
pub fn decode_block(src: &[u8], dst: &mut [u8]) -> Option<usize> {
    let (mut i, mut o) = (0usize, 0usize);
    loop {
        let token = *src.get(i)?;
        i += 1;
        let mut lit = (token >> 4) as usize;
        if lit == 15 {
            lit = more_len(src, &mut i, lit)?;
        }
        let lit_end = i.checked_add(lit)?;
        let out_end = o.checked_add(lit)?;
        dst.get_mut(o..out_end)?
            .copy_from_slice(src.get(i..lit_end)?);
        i = lit_end;
        o = out_end;
        if i == src.len() {
            return Some(o);
        }
        let off = u16::from_le_bytes([*src.get(i)?, *src.get(i + 1)?]) as usize;
        i += 2;
        if off == 0 || off > o {
            return None;
        }
        let mut mlen = (token & 15) as usize;
        if mlen == 15 {
            mlen = more_len(src, &mut i, mlen)?;
        }
        mlen += 4;
        let end = o.checked_add(mlen)?;
        if end > dst.len() {
            return None;
        }
        let from = o - off;
        if off >= mlen {
            dst.copy_within(from..from + mlen, o);
        } else {
            // Overlapping: the match repeats the last `off` bytes. Copy them once, then
            // copies of the run so far, whose length stays a multiple of `off` until
            // the last copy (few large copies, not one per period).
            dst.copy_within(from..o, o);
            let mut k = off;
            while k < mlen {
                let step = k.min(mlen - k);
                dst.copy_within(o..o + step, o + k);
                k += step;
            }
        }
        o = end;
    }
}

#[cfg(test)]
mod tests {
    use super::decode_block;
    use lz4_flex::block::compress_into;

    fn round_trip(data: &[u8]) {
        let mut c = vec![0u8; lz4_flex::block::get_maximum_output_size(data.len())];
        let n = compress_into(data, &mut c).unwrap();
        let mut out = vec![0u8; data.len()];
        assert_eq!(decode_block(&c[..n], &mut out), Some(data.len()));
        assert_eq!(out, data);
        // One byte too small a destination is refused, never overrun.
        if !data.is_empty() {
            let mut short = vec![0u8; data.len() - 1];
            assert_eq!(decode_block(&c[..n], &mut short), None);
        }
    }

    #[test]
    fn decodes_what_lz4_flex_encodes() {
        let mut x = 88172645463325252u64;
        let mut rnd = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        round_trip(&[]);
        round_trip(b"a");
        round_trip(&[0u8; 100_000]);
        for period in 1..=20usize {
            let pat: Vec<u8> = (0..period).map(|_| rnd() as u8).collect();
            let d: Vec<u8> = (0..70_000).map(|i| pat[i % period]).collect();
            round_trip(&d);
        }
        let random: Vec<u8> = (0..300_000).map(|_| rnd() as u8).collect();
        round_trip(&random);
        // Pages of one repeated word, like the benchmark's compressible data.
        let words: Vec<u8> = (0..1 << 20)
            .flat_map(|i: u64| ((i / 512).wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_le_bytes())
            .take(1 << 20)
            .collect();
        round_trip(&words);
        // Text-like data with matches at all distances.
        let text: Vec<u8> = (0..200_000)
            .map(|i| {
                b"the quick brown fox jumps over the lazy dog "[(i * 7 + (rnd() as usize % 3)) % 44]
            })
            .collect();
        round_trip(&text);
    }

    #[test]
    fn malformed_blocks_are_refused() {
        let mut out = [0u8; 64];
        // Offset 0, offset before the start, literal run past the input, truncated length.
        for bad in [
            &[0x10, b'a', 0, 0][..],
            &[0x10, b'a', 5, 0],
            &[0x50, b'a'],
            &[0xf0],
            &[0x1f, b'a', 1, 0, 255],
        ] {
            assert_eq!(decode_block(bad, &mut out), None, "{bad:?}");
        }
        let mut x = 1u64;
        for _ in 0..20_000 {
            let len = (x % 40) as usize;
            let b: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            // Must return (Some or None) without panicking or writing out of bounds.
            let _ = decode_block(&b, &mut out);
        }
    }
}
