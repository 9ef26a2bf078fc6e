//! From a pushed `.wasm` to something servable: what kind of binary it is (from its header,
//! with no compiling), which interface it exports (from wasmtime's view of it), and the
//! precompiled artifact that a release start, a rollback or a restart of `mar serve` loads
//! instead of compiling again.
//!
//! Trust: loading an artifact maps machine code into the process, so an artifact must come
//! only from [`Host::compile`](crate::Host::compile) on this host and be kept where apps cannot
//! write (the runtime keeps them root-owned, mode 0600, beside the release). Its file name
//! carries the engine's compatibility hash ([`Host::artifact_key`](crate::Host::artifact_key)),
//! and wasmtime checks the same again when it loads one, so an upgrade of mini-MAR recompiles
//! rather than loads code built for another engine.

use std::fmt;

/// The interface a binary exports, which decides how requests reach it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interface {
    /// A component exporting `wasi:http/incoming-handler`.
    WasiHttp,
    /// A WASI preview1 command module (`_start`), driven as a WAGI (CGI) handler.
    Wagi,
}

impl Interface {
    /// `wasi-http` or `wagi`, as stored with a release and shown by `mar apps:info`.
    pub fn as_str(self) -> &'static str {
        match self {
            Interface::WasiHttp => "wasi-http",
            Interface::Wagi => "wagi",
        }
    }

    /// The interface named by [`Interface::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "wasi-http" => Some(Interface::WasiHttp),
            "wagi" => Some(Interface::Wagi),
            _ => None,
        }
    }

    /// What users call it.
    pub fn describe(self) -> &'static str {
        match self {
            Interface::WasiHttp => "wasi:http component (wasi:http/incoming-handler)",
            Interface::Wagi => "WAGI module (WASI preview1 command, CGI/1.1)",
        }
    }
}

impl fmt::Display for Interface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which layer of WebAssembly a binary's header announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A core module (`\0asm`, version 1).
    Module,
    /// A component (`\0asm`, the component layer).
    Component,
}

/// Reads the 8-byte header: `\0asm`, then a 16-bit version and a 16-bit layer (0 for core
/// modules, version 1; 1 for components). No compiling, so a push of something else is
/// refused at once with what it looks like instead.
pub fn inspect(bytes: &[u8]) -> Result<Kind, String> {
    let Some(header) = bytes.get(..8) else {
        return Err(format!(
            "{} bytes, too short for a WebAssembly header",
            bytes.len()
        ));
    };
    if &header[..4] != b"\0asm" {
        let looks = if header.starts_with(b"\x7fELF") {
            "a native ELF executable"
        } else if header.iter().all(|b| b.is_ascii()) {
            "text"
        } else {
            "some other binary"
        };
        return Err(format!(
            "it does not start with \\0asm (it looks like {looks})"
        ));
    }
    let version = u16::from_le_bytes([header[4], header[5]]);
    let layer = u16::from_le_bytes([header[6], header[7]]);
    match (layer, version) {
        (0, 1) => Ok(Kind::Module),
        (1, _) => Ok(Kind::Component),
        _ => Err(format!(
            "unknown WebAssembly layer {layer}, version {version}"
        )),
    }
}

/// A binary compiled for this host's engine.
pub struct Compiled {
    /// What it exports.
    pub interface: Interface,
    /// The precompiled artifact, to store with the release.
    pub artifact: Vec<u8>,
}

impl fmt::Debug for Compiled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Compiled")
            .field("interface", &self.interface)
            .field("artifact", &self.artifact.len())
            .finish()
    }
}

/// Maps a component artifact written by `Host::compile`.
#[allow(unsafe_code)]
pub(crate) fn deserialize_component(
    engine: &wasmtime::Engine,
    path: &std::path::Path,
) -> wasmtime::Result<wasmtime::component::Component> {
    // SAFETY: wasmtime runs the machine code in an artifact as is, so it must be one that
    // this host's `Host::compile` wrote. The runtime keeps artifacts in a root-owned
    // directory apps cannot write (see this module's trust note), and wasmtime itself checks
    // the artifact's header and engine compatibility before using it.
    unsafe { wasmtime::component::Component::deserialize_file(engine, path) }
}

/// Maps a module artifact written by `Host::compile`.
#[allow(unsafe_code)]
pub(crate) fn deserialize_module(
    engine: &wasmtime::Engine,
    path: &std::path::Path,
) -> wasmtime::Result<wasmtime::Module> {
    // SAFETY: as for `deserialize_component`: only artifacts this host compiled, kept where
    // apps cannot write.
    unsafe { wasmtime::Module::deserialize_file(engine, path) }
}

/// The `wasi:http/incoming-handler` export name a component must have (any 0.2 version).
pub(crate) fn is_incoming_handler(export: &str) -> bool {
    export
        .strip_prefix("wasi:http/incoming-handler@0.2.")
        .is_some_and(|patch| !patch.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers() {
        assert_eq!(inspect(b"\0asm\x01\0\0\0rest"), Ok(Kind::Module));
        assert_eq!(inspect(b"\0asm\x0d\0\x01\0"), Ok(Kind::Component));
        assert!(inspect(b"\0asm").unwrap_err().contains("too short"));
        assert!(
            inspect(b"\x7fELF\x02\x01\x01\0")
                .unwrap_err()
                .contains("ELF")
        );
        assert!(inspect(b"hello world").unwrap_err().contains("text"));
        assert!(inspect(b"\0asm\x02\0\0\0").unwrap_err().contains("layer 0"));
    }

    #[test]
    fn interfaces_round_trip() {
        for i in [Interface::WasiHttp, Interface::Wagi] {
            assert_eq!(Interface::parse(i.as_str()), Some(i));
        }
        assert_eq!(Interface::parse("cgi"), None);
    }

    #[test]
    fn incoming_handler_names() {
        assert!(is_incoming_handler("wasi:http/incoming-handler@0.2.0"));
        assert!(is_incoming_handler("wasi:http/incoming-handler@0.2.12"));
        assert!(!is_incoming_handler("wasi:http/incoming-handler@0.3.0"));
        assert!(!is_incoming_handler("wasi:http/outgoing-handler@0.2.0"));
        assert!(!is_incoming_handler("wasi:http/incoming-handler@0.2."));
    }
}
