//! build.rs's optional object cache (`LLAMABUS_GGML_CACHE=DIR`): ggml's compiled, renamed and
//! checked objects, reused by every build of a checkout that compiles ggml the same way. cargo
//! keeps one build-script output per profile, so without it `cargo clippy`, `cargo test` and
//! `cargo build --release` each compile ggml's ~20 files once per CPU variant (112 s of compiler CPU time for
//! x86_64, README "Design"); the test command sets it, plain `cargo build` does not.
//!
//! An entry's key hashes everything that decides the objects: each compile unit's full command
//! line (compiler, flags, sources; the profile's OUT_DIR replaced by a placeholder, as the
//! generated header it points to has fixed content), the compiler's `--version`, the binutils
//! that rename symbols, and the bytes of every file under vendor/ggml. Anything else is a new key,
//! never a stale hit. Entries are written to a temporary directory and renamed into place, so
//! concurrent builds never see half an entry.

use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Bumped when the layout of an entry changes.
const FORMAT: u32 = 1;

/// The key of one ggml build: `parts` are the command lines and tool names, `vendor` the tree.
pub fn key(parts: &[String], compiler: &Path, vendor: &Path) -> String {
    let mut h = DefaultHasher::new();
    FORMAT.hash(&mut h);
    parts.hash(&mut h);
    let version = Command::new(compiler).arg("--version").output();
    match version {
        Ok(out) => out.stdout.hash(&mut h),
        Err(e) => panic!("llamabus: running {} --version: {e}", compiler.display()),
    }
    hash_tree(vendor, vendor, &mut h);
    format!("{:016x}", h.finish())
}

fn hash_tree(root: &Path, dir: &Path, h: &mut DefaultHasher) {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("llamabus: reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            hash_tree(root, &path, h);
        } else {
            path.strip_prefix(root).unwrap().hash(h);
            fs::read(&path)
                .unwrap_or_else(|e| panic!("llamabus: reading {}: {e}", path.display()))
                .hash(h);
        }
    }
}

/// The object groups (ggml-base first, then one per variant) of entry `key`, if it exists.
pub fn load(dir: &Path, key: &str) -> Option<Vec<Vec<PathBuf>>> {
    let entry = dir.join(key);
    let manifest = fs::read_to_string(entry.join("manifest")).ok()?;
    let mut groups: Vec<Vec<PathBuf>> = Vec::new();
    for line in manifest.lines() {
        let (group, name) = line.split_once(' ')?;
        let group: usize = group.parse().ok()?;
        if group == groups.len() {
            groups.push(Vec::new());
        }
        let path = entry.join(group.to_string()).join(name);
        if group + 1 != groups.len() || !path.is_file() {
            return None;
        }
        groups[group].push(path);
    }
    Some(groups)
}

/// Stores the object groups as entry `key`. A failure only costs the next build a compile, so
/// it is reported as a cargo warning, never as a build error.
pub fn store(dir: &Path, key: &str, groups: &[Vec<PathBuf>]) {
    let tmp = dir.join(format!(".tmp-{key}-{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut manifest = String::new();
        for (g, objs) in groups.iter().enumerate() {
            let gdir = tmp.join(g.to_string());
            fs::create_dir_all(&gdir)?;
            for (i, obj) in objs.iter().enumerate() {
                // Index-prefixed: two objects of one group may share a file name.
                let name = format!("{i}-{}", obj.file_name().unwrap().to_string_lossy());
                fs::copy(obj, gdir.join(&name))?;
                manifest.push_str(&format!("{g} {name}\n"));
            }
        }
        fs::write(tmp.join("manifest"), manifest)?;
        // Another build may have stored the same key meanwhile: its entry is as good as ours.
        if fs::rename(&tmp, dir.join(key)).is_err() {
            fs::remove_dir_all(&tmp)?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&tmp);
        println!(
            "cargo:warning=llamabus: could not store ggml's objects in {}: {e}",
            dir.display()
        );
    }
}
