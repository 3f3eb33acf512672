//! `kiln ui` as a command: a missing runs folder and a taken port are clear errors, an
//! empty folder serves a page that says how to make runs, and SIGTERM stops it cleanly.

mod common;

use common::{kiln, output_within};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn a_missing_runs_folder_and_a_taken_port_are_clear_errors() {
    let out = output_within(
        kiln().args(["ui", "--runs-dir", "/nonexistent/kiln-runs"]),
        30,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/kiln-runs"), "{err}");
    assert!(err.contains("--runs-dir"), "{err}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let runs = tempfile::tempdir().unwrap();
    let out = output_within(
        kiln()
            .args(["ui", "--addr", &addr, "--runs-dir"])
            .arg(runs.path()),
        30,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("binding {addr}")), "{err}");
    assert!(err.contains("--addr"), "{err}");
}

#[test]
fn an_empty_runs_folder_serves_and_sigterm_stops_it() {
    let runs = tempfile::tempdir().unwrap();
    let mut child = kiln()
        .args(["ui", "--addr", "127.0.0.1:0", "--runs-dir"])
        .arg(runs.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let addr = first
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("first line: {first:?}"))
        .to_string();
    let mut s = TcpStream::connect(&addr).unwrap();
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut page = String::new();
    s.read_to_string(&mut page).unwrap();
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("No runs here yet"), "{page}");

    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let t = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "still running after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // it wrote nothing into the runs folder
    assert_eq!(std::fs::read_dir(runs.path()).unwrap().count(), 0);
}
