//! Process trees: what a restore could not bring back makes the checkpoint fail with a
//! message naming it (never a generation that restores wrong), and the program runs on
//! to its normal end. Needs `cargo build --release` first.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use torpor_engine_suite::contract::{Contract, TIMING};
use torpor_engine_suite::output::is_ready;
use torpor_engine_suite::process::{self, Proc};

/// Runs `script` (python3) under `torpor run`, asks for a checkpoint once it printed
/// READY, and checks the refusal names `expect`; the program must then end normally
/// with `done`.
fn refused(name: &str, script: &str, expect: &str) {
    let contract = Contract::locate().expect("engine built (cargo build --release)");
    let dir: PathBuf =
        std::env::temp_dir().join(format!("torpor-refusal-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let prog = dir.join("prog.py");
    std::fs::write(&prog, script).expect("script written");
    let fdclean = PathBuf::from(env!("TORPOR_SUITE_PROGS_DIR")).join("fdclean");
    let mut run = Command::new(&fdclean);
    run.arg(&contract.torpor)
        .args(contract.run_args(
            &dir.join("images"),
            &["/usr/bin/python3".into(), prog.clone().into()],
        ))
        .current_dir(&dir);
    let mut p = Proc::spawn(run, "torpor run").expect("program starts");
    let (_, first) = p
        .wait_line(0, TIMING.ready, is_ready)
        .expect("program prints READY");
    let pid: u32 = first
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("READY pid");
    let mut ck = Command::new(&fdclean);
    ck.arg(&contract.torpor)
        .args(contract.checkpoint_args(pid, Duration::from_secs(30)))
        .current_dir(&dir);
    let f = process::run(ck, "torpor checkpoint", TIMING.command).expect("checkpoint runs");
    assert!(
        !f.status.success(),
        "{name}: the checkpoint should have been refused\n{}",
        f.describe()
    );
    assert!(
        f.stderr.contains(expect),
        "{name}: the refusal does not name {expect:?}\n{}",
        f.describe()
    );
    let fin = p.finish(TIMING.exit).expect("program ends");
    assert!(
        fin.status.success() && fin.stdout.last().map(String::as_str) == Some("done"),
        "{name}: the program did not run on to its end\n{}",
        fin.describe()
    );
    let gens = std::fs::read_dir(dir.join("images"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("gen-"))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(gens, 0, "{name}: a generation was committed anyway");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn child_without_agent() {
    refused(
        "noagent",
        r#"
import os, subprocess, time
env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
child = subprocess.Popen(["/bin/sleep", "4"], env=env)
print("READY", os.getpid(), flush=True)
child.wait()
print("done", flush=True)
"#,
        "has no torpor agent",
    );
}

#[test]
fn fds_in_flight_on_a_socket_pair() {
    refused(
        "scm",
        r#"
import os, socket, time
a, b = socket.socketpair()
pid = os.fork()
if pid == 0:
    a.close()
    time.sleep(3)
    os._exit(0)
b.close()
r, w = os.pipe()
socket.send_fds(a, [b"x"], [r])
os.close(r)
os.close(w)
print("READY", os.getpid(), flush=True)
os.waitpid(pid, 0)
print("done", flush=True)
"#,
        "SCM_RIGHTS",
    );
}

// A regular file's offset shared between processes is no longer refused: the engine
// suite's tree_shared_log and tree_scm cases restore it.

#[test]
fn data_sent_to_a_connection_not_yet_accepted() {
    refused(
        "embryo",
        r#"
import os, socket, time
srv = socket.socket(socket.AF_UNIX)
srv.bind("srv.sock")
srv.listen(2)
pid = os.fork()
if pid == 0:
    c = socket.socket(socket.AF_UNIX)
    c.connect("srv.sock")
    c.send(b"hello before accept")
    time.sleep(3)
    os._exit(0)
time.sleep(0.3)
print("READY", os.getpid(), flush=True)
os.waitpid(pid, 0)
print("done", flush=True)
"#,
        "has not accepted yet",
    );
}

#[test]
fn datagrams_from_a_closed_sender() {
    // recvfrom reports the name of a datagram's sender even after that socket was
    // closed; a restore could not send it again from a socket of that name.
    refused(
        "dgramclosed",
        r#"
import os, socket, time
srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
srv.bind("dgram.sock")
pid = os.fork()
if pid == 0:
    c = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    c.bind("\0torpor-refusal-closed-%d" % os.getpid())
    c.sendto(b"from a socket closed since", "dgram.sock")
    c.close()
    time.sleep(3)
    os._exit(0)
time.sleep(0.3)
print("READY", os.getpid(), flush=True)
os.waitpid(pid, 0)
print("done", flush=True)
"#,
        "a socket that is closed or outside the checkpointed process tree",
    );
}

#[test]
fn datagram_socket_connected_outside_the_tree() {
    // The receiver is this test process: never part of the program's tree.
    let dir = std::env::temp_dir().join(format!("torpor-refusal-dgram-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let path = dir.join("outside.sock");
    let outside = std::os::unix::net::UnixDatagram::bind(&path).expect("bound");
    refused(
        "dgramout",
        &format!(
            r#"
import os, socket, time
c = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
c.connect("{}")
c.send(b"to the outside")
print("READY", os.getpid(), flush=True)
time.sleep(3)
print("done", flush=True)
"#,
            path.display()
        ),
        "which is outside the checkpointed process tree",
    );
    drop(outside);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn udp_socket() {
    refused(
        "udp",
        r#"
import os, socket, time
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(("127.0.0.1", 0))
pid = os.fork()
if pid == 0:
    time.sleep(3)
    os._exit(0)
print("READY", os.getpid(), flush=True)
os.waitpid(pid, 0)
print("done", flush=True)
"#,
        "only Unix stream, datagram and seqpacket socket pairs",
    );
}

#[test]
fn tcp_connection_to_a_process_outside_the_tree() {
    // The server is this test process: never part of the program's tree.
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let port = l.local_addr().expect("port").port();
    std::thread::spawn(move || {
        if let Ok((s, _)) = l.accept() {
            std::thread::sleep(Duration::from_secs(10));
            drop(s);
        }
    });
    refused(
        "tcpout",
        &format!(
            r#"
import os, socket, time
c = socket.create_connection(("127.0.0.1", {port}))
time.sleep(0.3)
print("READY", os.getpid(), flush=True)
time.sleep(3)
print("done", flush=True)
"#
        ),
        "outside the checkpointed process tree",
    );
}
