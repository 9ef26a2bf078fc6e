//! `mar tls:ca`: prints the root of the local certificate authority that issues the HTTPS
//! listener's certificate, for browsers, curl and programs to trust once.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;

/// The commands of this topic.
#[derive(Subcommand, Debug)]
pub(crate) enum TlsCommand {
    /// Print the local certificate authority's root certificate (PEM), which signs the
    /// certificate mar serve --https-listen serves for the apps' domain: trust it once, as
    /// `curl --cacert`, `NODE_EXTRA_CA_CERTS`, or the system's store (`update-ca-certificates`).
    #[command(name = "tls:ca")]
    TlsCa,
}

/// Runs one command of this topic; none needs the server running.
pub(crate) fn run(cmd: TlsCommand, data_dir: &Path) -> anyhow::Result<ExitCode> {
    match cmd {
        TlsCommand::TlsCa => {
            let path = data_dir.join("tls").join(mar_runtime::tls::CA_CERT);
            let pem = std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "no local certificate authority at {} yet: mar serve makes it when it first starts with --https-listen (or https_listen in mar.yaml)",
                    path.display()
                )
            })?;
            print!("{pem}");
            Ok(ExitCode::SUCCESS)
        }
    }
}
