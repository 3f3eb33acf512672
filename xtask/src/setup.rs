//! `cargo xtask setup`: the ONNX Runtime library and the python venv, in the kiln cache.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cmd::{self, Failure, Result};
use crate::paths::{self, ORT_VERSION};

/// What `setup` provides to the commands it runs.
#[derive(Debug, Clone)]
pub struct Tools {
    /// The ONNX Runtime shared library, passed as `ORT_DYLIB_PATH`.
    pub ort_lib: PathBuf,
    /// The venv's python (with onnx and onnxruntime), passed as `KILN_PYTHON`; `None`
    /// when the venv could not be made outside CI (the tests that need it then skip).
    pub python: Option<PathBuf>,
    /// Headless Chromium and ChromeDriver for kiln ui's browser tests, passed as
    /// `KILN_CHROMIUM` and `KILN_CHROMEDRIVER`; only `test` and `bench ui` look for them.
    pub browser: Option<crate::browser::Browser>,
}

impl Tools {
    /// Sets `ORT_DYLIB_PATH` and `KILN_PYTHON` on `command`.
    pub fn apply<'a>(&self, command: &'a mut Command) -> &'a mut Command {
        command.env("ORT_DYLIB_PATH", &self.ort_lib);
        if let Some(python) = &self.python {
            command.env("KILN_PYTHON", python);
        }
        if let Some(b) = &self.browser {
            command.env("KILN_CHROMIUM", &b.chromium);
            command.env("KILN_CHROMEDRIVER", &b.chromedriver);
        }
        command
    }

    /// Prints the paths, as the environment the other subcommands give their children.
    pub fn print(&self) {
        println!("ORT_DYLIB_PATH={}", self.ort_lib.display());
        match &self.python {
            Some(python) => println!("KILN_PYTHON={}", python.display()),
            None => println!("KILN_PYTHON is not set (no venv; see the warning above)"),
        }
    }
}

/// The way around xtask's download: fetch the library by hand.
const ORT_BY_HAND: &str = "download libonnxruntime.so 1.31.1 yourself (it is \
     onnxruntime/capi/libonnxruntime.so.1.31.1 in the onnxruntime 1.31.1 wheel on PyPI) and set \
     ORT_DYLIB_PATH to it";

/// Hint for a missing `python3` or pip while fetching ONNX Runtime.
fn no_python_for_ort() -> String {
    format!(
        "install python3 with pip (e.g. `apt-get install python3 python3-pip python3-venv`), \
         or {ORT_BY_HAND}"
    )
}

/// Makes sure the ONNX Runtime library and the venv exist; fast when they do.
///
/// A venv that cannot be made is an error under CI (env `CI` set, as CI systems do) and
/// a warning elsewhere, so that a machine without python can still build and test
/// with `ORT_DYLIB_PATH` set by hand.
pub fn setup() -> Result<Tools> {
    let cache = paths::cache_dir()?;
    let ort_lib = ensure_ort(&cache)?;
    let python = match ensure_venv(&cache) {
        Ok(python) => Some(python),
        Err(failure) if !in_ci() => {
            if let Failure::Message(message) = &failure {
                eprintln!("setup: warning: {message}");
            }
            eprintln!(
                "setup: warning: continuing without KILN_PYTHON; the tests that check ONNX \
                 exports with onnx and onnxruntime will skip (under CI=true they fail)"
            );
            None
        }
        Err(failure) => return Err(failure),
    };
    Ok(Tools {
        ort_lib,
        python,
        browser: None,
    })
}

/// Whether this runs under CI: env `CI` set to something other than `false`/`0`.
pub(crate) fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| !matches!(value.trim(), "" | "0" | "false"))
}

/// Prints one status line of setup.
fn report(item: &str, state: &str, path: &Path) {
    eprintln!("setup: {item:<24} {state:<10} {}", path.display());
}

/// The ONNX Runtime library: `$ORT_DYLIB_PATH` when it exists, else the cached copy
/// (downloaded from the PyPI wheel when absent).
fn ensure_ort(cache: &Path) -> Result<PathBuf> {
    if let Some(path) = paths::env_path("ORT_DYLIB_PATH") {
        if path.is_file() {
            let path = paths::absolute(&path)?;
            report("onnx runtime", "found", &path);
            eprintln!("setup: using ORT_DYLIB_PATH as set in the environment");
            return Ok(path);
        }
        eprintln!(
            "setup: warning: ORT_DYLIB_PATH={} is not a file; using the kiln cache instead",
            path.display()
        );
    }
    let dir = cache.join(format!("onnxruntime-{ORT_VERSION}"));
    let lib = dir.join("libonnxruntime.so");
    let item = format!("onnx runtime {ORT_VERSION}");
    if is_elf(&lib) {
        report(&item, "found", &lib);
        return Ok(lib);
    }
    eprintln!("setup: downloading the onnxruntime {ORT_VERSION} wheel from PyPI");
    download_ort(&dir, &lib)?;
    report(&item, "installed", &lib);
    Ok(lib)
}

/// Whether `path` is a file that starts like a shared library (ELF).
fn is_elf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    fs::File::open(path)
        .and_then(|mut file| file.read_exact(&mut magic))
        .map(|()| magic == *b"\x7fELF")
        .unwrap_or(false)
}

/// A scratch folder that is removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Creates `dir` (and its parents) or fails with a message naming it.
fn create_dir(dir: &Path) -> Result {
    fs::create_dir_all(dir).map_err(|err| {
        Failure::msg(format!(
            "cannot create {}: {err}; check its permissions or set KILN_CACHE_DIR to a writable folder",
            dir.display()
        ))
    })
}

/// Python that copies one member of a zip (the wheel) to a file, fsynced.
const EXTRACT_PY: &str = r#"
import os, shutil, sys, zipfile
wheel, member, out = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z:
    if member not in z.namelist():
        found = [n for n in z.namelist() if "libonnxruntime" in n]
        sys.exit("the wheel has no %s (it has: %s)" % (member, ", ".join(found) or "nothing similar"))
    with z.open(member) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)
        dst.flush()
        os.fsync(dst.fileno())
"#;

/// Downloads the onnxruntime wheel with pip, extracts the library into `dir` under a
/// temporary name and renames it to `lib`.
fn download_ort(dir: &Path, lib: &Path) -> Result {
    if !cmd::probe(Command::new("python3").arg("--version")) {
        return Err(Failure::msg(format!(
            "python3 is needed to fetch ONNX Runtime and was not found (or does not run); {}",
            no_python_for_ort()
        )));
    }
    if !cmd::probe(Command::new("python3").args(["-m", "pip", "--version"])) {
        return Err(Failure::msg(format!(
            "pip for python3 is needed to fetch ONNX Runtime and `python3 -m pip` does not run; {}",
            no_python_for_ort()
        )));
    }
    create_dir(dir)?;
    let id = std::process::id();
    let scratch = TempDir(dir.join(format!(".download-{id}")));
    let _ = fs::remove_dir_all(&scratch.0);
    create_dir(&scratch.0)?;

    let mut pip = Command::new("python3");
    pip.args(["-m", "pip", "download", "-q", "--disable-pip-version-check"])
        .args(["--no-deps", "--only-binary=:all:"])
        .arg(format!("onnxruntime=={ORT_VERSION}"))
        .arg("-d")
        .arg(&scratch.0);
    if !cmd::status(&mut pip, &no_python_for_ort())?.success() {
        return Err(Failure::msg(format!(
            "`{}` failed (see pip's message above); check the network access to PyPI, or \
             {ORT_BY_HAND}",
            cmd::describe(&pip)
        )));
    }
    let wheel = find_wheel(&scratch.0)?;

    let member = format!("onnxruntime/capi/libonnxruntime.so.{ORT_VERSION}");
    let partial = dir.join(format!(".libonnxruntime.so.{id}.partial"));
    let mut extract = Command::new("python3");
    extract
        .args(["-c", EXTRACT_PY])
        .arg(&wheel)
        .arg(&member)
        .arg(&partial);
    if !cmd::status(&mut extract, &no_python_for_ort())?.success() {
        let _ = fs::remove_file(&partial);
        return Err(Failure::msg(format!(
            "could not extract {member} from {} (see above); {ORT_BY_HAND}",
            wheel.display()
        )));
    }
    if !is_elf(&partial) {
        let _ = fs::remove_file(&partial);
        return Err(Failure::msg(format!(
            "{member} in {} is not a shared library; {ORT_BY_HAND}",
            wheel.display()
        )));
    }
    fs::rename(&partial, lib).map_err(|err| {
        let _ = fs::remove_file(&partial);
        Failure::msg(format!(
            "cannot move the library to {}: {err}; check the folder's permissions",
            lib.display()
        ))
    })
}

/// The one `.whl` file pip put in `dir`.
fn find_wheel(dir: &Path) -> Result<PathBuf> {
    let entries = fs::read_dir(dir)
        .map_err(|err| Failure::msg(format!("cannot read {}: {err}", dir.display())))?;
    entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .find(|path| path.extension().is_some_and(|ext| ext == "whl"))
        .ok_or_else(|| {
            Failure::msg(format!(
                "pip downloaded no onnxruntime {ORT_VERSION} wheel into {}; check that PyPI has \
                 one for this platform, or set ORT_DYLIB_PATH to a libonnxruntime.so {ORT_VERSION}",
                dir.display()
            ))
        })
}

/// Python that exits 0 only if onnx and the right onnxruntime import.
fn venv_check_py() -> String {
    format!(
        "import sys, onnx, onnxruntime; \
         sys.exit(0 if onnxruntime.__version__ == '{ORT_VERSION}' else 1)"
    )
}

/// The venv `<cache>/venv` with onnx, onnxruntime and numpy; returns its python.
fn ensure_venv(cache: &Path) -> Result<PathBuf> {
    let venv = cache.join("venv");
    let python = venv.join("bin").join("python");
    let item = "python venv";
    let works = || cmd::probe(Command::new(&python).args(["-c", &venv_check_py()]));
    if works() {
        report(item, "found", &venv);
        return Ok(python);
    }
    let hint = "install python3 with the venv module (e.g. `apt-get install python3 python3-venv`) \
                and run `cargo xtask setup` again";
    if !python.is_file() {
        create_dir(cache)?;
        eprintln!("setup: creating the venv {}", venv.display());
        cmd::run(
            Command::new("python3")
                .args(["-m", "venv", "--clear"])
                .arg(&venv),
            hint,
        )
        .map_err(|failure| match failure {
            Failure::Exit(_) => Failure::msg(format!(
                "`python3 -m venv {}` failed (see above); {hint}",
                venv.display()
            )),
            other => other,
        })?;
    }
    eprintln!("setup: installing onnx, onnxruntime {ORT_VERSION} and numpy into the venv");
    cmd::run(
        Command::new(&python)
            .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
            .args(["onnx", &format!("onnxruntime=={ORT_VERSION}"), "numpy"]),
        hint,
    )
    .map_err(|failure| match failure {
        Failure::Exit(_) => Failure::msg(format!(
            "installing onnx and onnxruntime {ORT_VERSION} into {} failed (see pip's message \
             above); check the network access to PyPI, or delete the venv and run `cargo xtask \
             setup` again",
            venv.display()
        )),
        other => other,
    })?;
    if !works() {
        return Err(Failure::msg(format!(
            "{} still cannot import onnx and onnxruntime {ORT_VERSION}; delete {} and run \
             `cargo xtask setup` again",
            python.display(),
            venv.display()
        )));
    }
    report(item, "installed", &venv);
    Ok(python)
}
