//! The Python interpreter for client-library tests (psycopg 3 and asyncpg, pinned in .ci/requirements.txt): from
//! $SHARDPOOL_PYTHON (CI sets it to its .venv), else `<repo>/.venv/bin/python`, else a venv created in
//! `<repo>/target/pyvenv` from .ci/requirements.txt, so `cargo test` works on a fresh machine with only python3.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

const MODULES: &str = "import pytest, pytest_timeout, psycopg, asyncpg";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn has_modules(python: &Path) -> bool {
    Command::new(python)
        .args(["-c", MODULES])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The interpreter to run the suite with.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("SHARDPOOL_PYTHON").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(
            has_modules(&p),
            "SHARDPOOL_PYTHON={} cannot `{MODULES}`; install .ci/requirements.txt into it or unset it",
            p.display()
        );
        return p;
    }
    let dot_venv = repo().join(".venv/bin/python");
    if has_modules(&dot_venv) {
        return dot_venv;
    }
    bootstrap(&repo().join("target/pyvenv"))
}

/// Creates (or refreshes) a venv with the pinned requirements; reinstalls when the pins change.
fn bootstrap(dir: &Path) -> PathBuf {
    let python = dir.join("bin/python");
    let requirements = repo().join(".ci/requirements.txt");
    let wanted = std::fs::read_to_string(&requirements).unwrap();
    let stamp = dir.join("requirements.installed");
    if has_modules(&python) && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&*wanted) {
        return python;
    }
    if !python.exists() {
        std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
        run(Command::new("python3").args(["-m", "venv"]).arg(dir));
    }
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(&requirements));
    assert!(
        has_modules(&python),
        "{} still cannot `{MODULES}` after pip install",
        python.display()
    );
    std::fs::write(&stamp, wanted).unwrap();
    python
}
