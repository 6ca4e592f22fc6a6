//! A raw `clone` trampoline shared by the capture helper thread and restore stage 2
//! (which includes this file by `#[path]`): it starts a thread on a given stack running
//! `f(arg)` without libc, so it works in a forked writer child and in a no_std program.

/// clone(flags, stack, ptid, ctid, tls) running `f(arg)` on the new stack in the child;
/// returns the child's tid (or a negative errno) in the parent. `f` must never return.
///
/// # Safety
/// `stack` is the top of a writable stack of the new thread, unused by anyone else while
/// it runs; `f` is an `extern "C" fn(u64) -> !` that is sound to run there with `arg`.
#[unsafe(naked)]
pub unsafe extern "C" fn raw_clone(
    flags: u64,
    stack: u64,
    ptid: u64,
    ctid: u64,
    tls: u64,
    f: u64,
    arg: u64,
) -> i64 {
    core::arch::naked_asm!(
        "mov rax, [rsp + 8]",
        "sub rsi, 16",
        "mov [rsi + 8], rax",
        "mov [rsi], r9",
        "mov r10, rcx",
        "mov eax, 56",
        "syscall",
        "test rax, rax",
        "jnz 2f",
        "pop rax",
        "pop rdi",
        "and rsp, -16",
        "call rax",
        "ud2",
        "2: ret",
    )
}
