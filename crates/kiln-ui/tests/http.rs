//! kiln ui over plain HTTP (no browser): what it refuses (other host names, paths that
//! leave the runs folder, files that are not figures), a run whose files are damaged
//! shown with the damage named and the rest of its page intact, and a runs folder left
//! exactly as it was after every page has been read.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// One GET with `host` as the Host header: (status, body).
fn get(addr: SocketAddr, path: &str, host: &str) -> (u16, String) {
    let (status, _, body) = exchange(addr, path, host);
    (status, body)
}

/// The response head (status line and headers, lower-case) of one GET.
fn get_head(addr: SocketAddr, path: &str, host: &str) -> String {
    exchange(addr, path, host).1
}

/// One GET on its own connection: (status, head in lower case, body).
fn exchange(addr: SocketAddr, path: &str, host: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text[9..12].parse().unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status, head.to_ascii_lowercase(), body.to_string())
}

/// Every path under `dir` (links not followed) with its size and modification time.
fn tree(dir: &Path) -> BTreeMap<PathBuf, (u64, SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            out.insert(e.path(), (m.len(), m.modified().unwrap()));
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    out
}

/// A copy of the run `real` as run `id`: run.json, and each stage linked to the same
/// cache entry except `eval`, copied so it can be damaged.
fn copy_run(real: &Path, id: &str) -> PathBuf {
    let dir = real.parent().unwrap().join(id);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(real.join("run.json"), dir.join("run.json")).unwrap();
    for e in std::fs::read_dir(real).unwrap().flatten() {
        if let Ok(target) = std::fs::read_link(e.path()) {
            if e.file_name() == "eval" {
                let from = real.join("eval");
                std::fs::create_dir_all(dir.join("eval")).unwrap();
                for f in std::fs::read_dir(&from).unwrap().flatten() {
                    std::fs::copy(f.path(), dir.join("eval").join(f.file_name())).unwrap();
                }
            } else {
                std::os::unix::fs::symlink(target, dir.join(e.file_name())).unwrap();
            }
        }
    }
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_what_it_must_and_shows_damage_without_writing() {
    let runs = tempfile::tempdir().unwrap();
    let p = kiln_pipeline::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pipelines/iris.toml"),
        &[],
    )
    .unwrap();
    let r = kiln_pipeline::run(&p, &kiln_pipeline::RunOptions::new(runs.path())).unwrap();
    assert!(r.ok);
    let damaged = copy_run(&r.run_dir, "20000101-000001");
    let metrics = damaged.join("eval/metrics.json");
    let text = std::fs::read(&metrics).unwrap();
    std::fs::write(&metrics, &text[..text.len() / 2]).unwrap();
    std::fs::write(runs.path().join("secret.txt"), "not for the page").unwrap();
    // a link out of the runs folder, to a folder that looks like a run
    let outside = tempfile::tempdir().unwrap();
    std::fs::copy(r.run_dir.join("run.json"), outside.path().join("run.json")).unwrap();
    std::os::unix::fs::symlink(outside.path(), runs.path().join("iris/escape")).unwrap();
    // a run.json whose stage id climbs out of the run folder
    let hostile = copy_run(&r.run_dir, "20000101-000002");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(hostile.join("run.json")).unwrap()).unwrap();
    manifest["stages"][2]["id"] = "../../../outside".into();
    std::fs::write(hostile.join("run.json"), manifest.to_string()).unwrap();
    let before = tree(runs.path());

    let server = kiln_ui::Server::bind(kiln_ui::Options {
        runs_dir: runs.path().to_path_buf(),
        addr: "127.0.0.1:0".parse().unwrap(),
        allow_hosts: vec!["box.lan".into()],
    })
    .await
    .unwrap();
    let addr = server.addr();
    tokio::spawn(server.run());
    let local = addr.to_string();
    let a = tokio::task::spawn_blocking(move || {
        let mut seen = Vec::new();
        // DNS rebinding: another site's name is refused, loopback names and --allow-host pass
        seen.push(get(addr, "/", "evil.example:80").0);
        seen.push(get(addr, "/", &local).0);
        seen.push(get(addr, "/", &format!("localhost:{}", addr.port())).0);
        seen.push(get(addr, "/", "box.lan").0);
        // paths outside the runs folder, hidden names, files that are not figures
        seen.push(get(addr, "/runs/iris/..%2F..%2Fetc", &local).0);
        seen.push(get(addr, "/runs/iris/.cache", &local).0);
        seen.push(get(addr, "/runs/..%2Fsecret.txt/x", &local).0);
        seen.push(get(addr, "/runs/iris/latest/files/eval/metrics.json", &local).0);
        seen.push(
            get(
                addr,
                "/runs/iris/latest/files/..%2F..%2F..%2Fsecret.txt/x.svg",
                &local,
            )
            .0,
        );
        seen.push(get(addr, "/runs/iris/nope", &local).0);
        let (svg_status, svg) = get(
            addr,
            "/runs/iris/latest/files/eval/confusion-train.svg",
            &local,
        );
        seen.push(svg_status);
        let damaged = get(addr, "/runs/iris/20000101-000001", &local);
        let list = get(addr, "/", &local).1;
        let live = get(addr, "/runs/iris/latest/progress", &local);
        let compare_one = get(addr, "/compare?run=iris/latest", &local).0;
        let escape = get(addr, "/runs/iris/escape", &local).0;
        let climbing = get(addr, "/runs/iris/20000101-000002", &local).1;
        let head = get_head(addr, "/", &local);
        let limited = get(addr, "/?limit=1", &local).1;
        let none = get(addr, "/?status=interrupted", &local).1;
        (
            seen,
            svg,
            damaged,
            list,
            live,
            compare_one,
            limited,
            none,
            (escape, climbing, head),
        )
    })
    .await
    .unwrap();
    let (seen, svg, (damaged_status, damaged_page), list, live, compare_one, limited, none, more) =
        a;
    let (escape, climbing, head) = more;
    // a link that leads out of the folder is refused like `..`; a stage id that climbs
    // out is not followed, and the page says so
    assert_eq!(escape, 403);
    assert!(climbing.contains("<strong>../../../outside</strong>: run.json says this stage has output, but its folder is missing"), "{climbing}");
    // every page carries the content security policy
    assert!(
        head.contains("content-security-policy: default-src 'self'; script-src 'self'"),
        "{head}"
    );
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");
    assert_eq!(
        seen,
        [421, 200, 200, 200, 403, 403, 403, 403, 403, 404, 200]
    );
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);

    // the damaged run: its metrics.json named as unreadable, the rest of the page intact
    assert_eq!(damaged_status, 200);
    assert!(damaged_page.contains("class=\"problem\"><strong>metrics.json</strong>"));
    assert!(damaged_page.contains("id=\"best-epoch-train\""));
    assert!(damaged_page.contains("id=\"cm-train\""));
    // the runs list still lists it, without metrics, and the real run with them
    assert!(list.contains("data-run=\"iris/20000101-000001\""));
    assert!(list.contains(&format!(
        "data-run=\"iris/{}\"",
        r.run_dir.file_name().unwrap().to_string_lossy()
    )));
    assert_eq!(live.0, 200);
    assert!(live.1.starts_with("{\"state\":\"ok\""), "{}", live.1);
    assert_eq!(compare_one, 400);
    // a limited list says how many it left out and links to all; an empty filter says so
    assert_eq!(limited.matches("<tr data-run=").count(), 1);
    assert!(limited.contains("1 of 3 runs shown."), "{limited}");
    assert!(limited.contains(">show all 3</a>"), "{limited}");
    assert!(none.contains("No run matches the filter."), "{none}");

    // nothing in the runs folder changed
    assert_eq!(tree(runs.path()), before);
}
