//! LZ4 blocks with no allocation and no `std`: the decoder of restore stage 2 (which
//! includes this file with `#[path]`), and the writer's encoder for runs of pages that each
//! repeat one 8-byte word, checked against `lz4_flex` by the unit tests.

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
        } else if 8 % off == 0 {
            // A period of 1, 2, 4 or 8 bytes (constant arrays, pages of one repeated
            // word): 8-byte stores of the pattern instead of many small copies.
            let mut pat = [0u8; 8];
            for (k, b) in pat.iter_mut().enumerate() {
                *b = dst[from + k % off];
            }
            let out = dst.get_mut(o..end)?;
            let mut words = out.chunks_exact_mut(8);
            for w in &mut words {
                w.copy_from_slice(&pat);
            }
            let rest = words.into_remainder();
            let n = rest.len();
            rest.copy_from_slice(&pat[..n]);
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

/// Bytes in a page (the encoder below works on whole pages).
pub const PAGE: usize = 4096;
/// Input bytes at the end of a block that must be literals (the LZ4 block format's end
/// rules: the last 5 bytes are literals and the last match starts 12 or more bytes before
/// the end; ending with 12 literal bytes satisfies both).
const END_LITERALS: usize = 12;

/// The word `page` repeats (its first 8 bytes, if every 8-byte word equals them), else
/// `None`. An all-zero page gives `Some(0)`. Gives up at the first 64-byte block that
/// differs, so random data costs one block.
#[inline]
pub fn repeated_word(page: &[u8]) -> Option<u64> {
    let first: [u8; 8] = page.get(..8)?.try_into().ok()?;
    let mut pat = [0u8; 64];
    for (k, b) in pat.iter_mut().enumerate() {
        *b = first[k % 8];
    }
    // Byte-wise XOR and OR over whole blocks: the compiler turns this into vector code.
    let same = page.len().is_multiple_of(64)
        && page.chunks_exact(64).all(|block| {
            block
                .iter()
                .zip(pat.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
        });
    same.then_some(u64::from_ne_bytes(first))
}

/// Writes an LZ4 length continuation for `n` (after a field of 15 in the token).
fn put_len(out: &mut [u8], p: &mut usize, mut n: usize) -> Option<()> {
    while n >= 255 {
        *out.get_mut(*p)? = 255;
        *p += 1;
        n -= 255;
    }
    *out.get_mut(*p)? = n as u8;
    *p += 1;
    Some(())
}

/// Encodes pages that each repeat one 8-byte word (`words[i]` for page `i`, as returned
/// by [`repeated_word`]) as one standard LZ4 block: per run of pages with the same word,
/// the word as 8 literal bytes and one match at offset 8; the block ends with 12 literal
/// bytes. About 27 bytes per page, written without searching, so such pages cost no
/// more than reading them. Returns the block's length, or `None` if `out` is too small.
pub fn encode_word_pages(words: &[u64], out: &mut [u8]) -> Option<usize> {
    let total = words.len().checked_mul(PAGE)?;
    if total < PAGE {
        return None;
    }
    let mut p = 0usize;
    let mut i = 0usize;
    let mut done = 0usize;
    while i < words.len() {
        let w = words[i];
        let mut j = i + 1;
        while j < words.len() && words[j] == w {
            j += 1;
        }
        let mut run = (j - i) * PAGE;
        if j == words.len() {
            run -= END_LITERALS;
        }
        // Sequence: 8 literals (the word), then a match of run - 8 bytes at offset 8.
        let mlen = run - 8;
        let ml = mlen - 4;
        *out.get_mut(p)? = (8 << 4) | ml.min(15) as u8;
        p += 1;
        out.get_mut(p..p + 8)?.copy_from_slice(&w.to_ne_bytes());
        p += 8;
        out.get_mut(p..p + 2)?.copy_from_slice(&8u16.to_le_bytes());
        p += 2;
        if ml >= 15 {
            put_len(out, &mut p, ml - 15)?;
        }
        done += run;
        i = j;
    }
    // Last sequence: the final 12 bytes as literals (the word's pattern continues: the
    // match ended on a multiple of 8 minus 12, i.e. 4 bytes into a word).
    let w = words[words.len() - 1].to_ne_bytes();
    *out.get_mut(p)? = (END_LITERALS as u8) << 4;
    p += 1;
    for k in 0..END_LITERALS {
        *out.get_mut(p + k)? = w[(done + k) % 8];
    }
    p += END_LITERALS;
    Some(p)
}

#[cfg(test)]
mod tests {
    use super::{decode_block, encode_word_pages, repeated_word, PAGE};
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

    #[test]
    fn word_pages_encode_to_standard_lz4() {
        let cases: Vec<Vec<u64>> = vec![
            vec![0],
            vec![0x0102_0304_0506_0708],
            vec![7, 7, 7],
            vec![1, 2, 3, 3, 0, 0x0101_0101_0101_0101, 5],
            (0..1024u64)
                .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
                .collect(),
            (0..300u64).map(|i| i / 7).collect(),
        ];
        for words in cases {
            let data: Vec<u8> = words
                .iter()
                .flat_map(|w| std::iter::repeat_n(w.to_ne_bytes(), PAGE / 8).flatten())
                .collect();
            for (k, page) in data.chunks(PAGE).enumerate() {
                assert_eq!(repeated_word(page), Some(words[k]));
            }
            let mut c = vec![0u8; words.len() * 32 + 32];
            let n = encode_word_pages(&words, &mut c).unwrap();
            assert!(
                n <= words.len() * 28 + 16,
                "{n} bytes for {} pages",
                words.len()
            );
            // The reference decoder (lz4_flex) and ours give back the pages.
            let mut back = vec![0u8; data.len()];
            let m = lz4_flex::block::decompress_into(&c[..n], &mut back).unwrap();
            assert!(
                m == data.len() && back == data,
                "lz4_flex decodes {words:?}"
            );
            let mut out = vec![0u8; data.len()];
            assert_eq!(decode_block(&c[..n], &mut out), Some(data.len()));
            assert!(out == data, "decode_block decodes {words:?}");
            // Too small an output buffer is refused, never overrun.
            assert_eq!(encode_word_pages(&words, &mut c[..n - 1]), None);
        }
        assert_eq!(encode_word_pages(&[], &mut [0u8; 64]), None);
    }

    #[test]
    fn pages_that_do_not_repeat_a_word_are_told_apart() {
        let mut page = vec![0u8; PAGE];
        assert_eq!(repeated_word(&page), Some(0));
        for at in [0usize, 7, 8, 63, 64, 100, 4095] {
            page[at] = 1;
            assert_eq!(repeated_word(&page), None, "byte {at}");
            page[at] = 0;
        }
        let w: Vec<u8> = (0..PAGE).map(|i| (i % 16) as u8).collect();
        assert_eq!(repeated_word(&w), None, "a 16-byte period is not one word");
    }
}
