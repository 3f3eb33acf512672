//! What the cluster tests share: a real loopback cluster (a `kiln-scheduler` and
//! `kiln-executor` processes, killed when dropped) and a generated two-file table.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port.
pub fn port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for(port: u16, what: &str) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{what} did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A scheduler and executors on loopback; killed when dropped.
pub struct Cluster {
    pub scheduler: Child,
    pub executors: Vec<Child>,
    pub url: String,
}

impl Cluster {
    pub fn start(dir: &Path, executors: usize) -> Cluster {
        Self::start_with(dir, executors, 10)
    }

    /// `executor_timeout`: seconds without a heartbeat before an executor counts as gone.
    pub fn start_with(dir: &Path, executors: usize, executor_timeout: u64) -> Cluster {
        let sp = port();
        let log = |name: &str| std::fs::File::create(dir.join(name)).unwrap();
        let scheduler = Command::new(env!("CARGO_BIN_EXE_kiln-scheduler"))
            .args(["--bind", &format!("127.0.0.1:{sp}")])
            .args(["--executor-timeout", &executor_timeout.to_string()])
            .stdout(Stdio::from(log("scheduler.log")))
            .stderr(Stdio::from(log("scheduler.err")))
            .spawn()
            .unwrap();
        wait_for(sp, "the scheduler");
        let mut ex = Vec::new();
        for i in 0..executors {
            let (p, g) = (port(), port());
            let work = dir.join(format!("executor-{i}"));
            std::fs::create_dir_all(&work).unwrap();
            ex.push(
                Command::new(env!("CARGO_BIN_EXE_kiln-executor"))
                    .args(["--scheduler", &format!("127.0.0.1:{sp}")])
                    .args(["--port", &p.to_string(), "--grpc-port", &g.to_string()])
                    .args(["--concurrent-tasks", "2"])
                    .arg("--work-dir")
                    .arg(&work)
                    .stdout(Stdio::from(log(&format!("executor-{i}.log"))))
                    .stderr(Stdio::from(log(&format!("executor-{i}.err"))))
                    .spawn()
                    .unwrap(),
            );
            wait_for(g, "an executor");
        }
        // registration follows the first heartbeat
        std::thread::sleep(Duration::from_secs(1));
        Cluster {
            scheduler,
            executors: ex,
            url: format!("df://127.0.0.1:{sp}"),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in self.executors.iter_mut().chain([&mut self.scheduler]) {
            c.kill().ok();
            c.wait().ok();
        }
    }
}

/// Two CSV files of `n` rows in all: an increasing integer id, numbers with gaps, a
/// category with gaps, an ordinal text column and a three-class target.
pub fn table(dir: &Path, n: usize) {
    let half = n / 2;
    for (f, range) in [(0, 0..half), (1, half..n)] {
        let mut s = String::from("id,a,b,c,d,e,f,label\n");
        for i in range {
            let x = i as f64;
            let a = if i % 7 == 3 {
                String::new()
            } else {
                format!("{:.4}", (x * 0.37).sin() * 10.0 + 3.0)
            };
            let b = (i * 31 % 97) as i64 - 40;
            let c = match i % 5 {
                0 | 3 => "red",
                1 => "green",
                2 => "blue",
                _ => "",
            };
            let d = format!("{:.6}", (x * 0.11).cos().abs() * 100.0 + (i % 13) as f64);
            let e = format!("{:.3}", ((i * 17) % 1000) as f64 / 7.0);
            let f = ["low", "mid", "high"][i * 7 % 3];
            let label = ["yes", "no", "maybe"][(i * 13 + i / 7) % 3];
            s += &format!("{i},{a},{b},{c},{d},{e},{f},{label}\n");
        }
        std::fs::write(dir.join(format!("data-{f}.csv")), s).unwrap();
    }
}
