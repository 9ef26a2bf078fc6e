//! Embeds the built-in buildpacks (`buildpacks/` at the repository's top) into the binary, so
//! that `mar` is one file: `mar serve` unpacks them into its data directory at start.

use std::io::Write;
use std::path::{Path, PathBuf};

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out);
        } else if p.is_file() {
            out.push(p);
        }
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let root = manifest.join("../../buildpacks");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    walk(&root, &mut files);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default());
    let Ok(mut f) = std::fs::File::create(out_dir.join("buildpacks.rs")) else {
        panic!("cannot write buildpacks.rs");
    };
    let mut text = String::from(
        "/// (relative path, contents, executable)\npub static FILES: &[(&str, &[u8], bool)] = &[\n",
    );
    for p in &files {
        println!("cargo:rerun-if-changed={}", p.display());
        let rel = p
            .strip_prefix(&root)
            .unwrap_or(p)
            .to_string_lossy()
            .replace('\\', "/");
        use std::os::unix::fs::PermissionsExt;
        let exec = std::fs::metadata(p)
            .map(|m| m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false);
        let abs = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
        text.push_str(&format!(
            "    ({rel:?}, include_bytes!({:?}), {exec}),\n",
            abs.display().to_string()
        ));
    }
    text.push_str("];\n");
    if f.write_all(text.as_bytes()).is_err() {
        panic!("cannot write buildpacks.rs");
    }
}
