//! Apps cannot call each other's instances directly: a web instance's `$PORT` on the loopback
//! interface takes connections only from root (`mar serve`: the router and health checks) and
//! from the app's own user, and none from other hosts (the router is the way in). Apps cannot
//! reach the cloud metadata address (169.254.0.0/16, where a VM's credentials are handed out),
//! and one app holds at most so many connections to the router. Everything else reaches an app through the router, with its
//! forwarded-header rules and access log. One nftables table per `mar serve` (data directory)
//! holds the instance ports and their owners; an instance's entry is added once its listener
//! is verified as its own, and removed when it stops.
//!
//! Where `nft` is missing or refused, `mar serve` (as root) does not start: apps are isolated
//! or do not run.

use std::process::Stdio;

use tokio::io::AsyncWriteExt;

// Only new connections are judged: a reply (an app's SYN-ACK or answer) whose destination
// port happens to equal another instance's port is not a connection to that instance.

/// Most connections one app's processes may hold to the router at once: the router counts
/// clients by address, and apps on this host all come from the loopback addresses, which they
/// could otherwise fill for everyone there (the git hook and the CLI among them).
const APP_ROUTER_CONNECTIONS: u32 = 1024;

/// The table of one `mar serve`.
#[derive(Debug, Clone)]
pub struct Firewall {
    table: String,
}

/// Runs `nft -f -` with `script`; `Err` with nft's message.
async fn nft(script: &str) -> Result<(), String> {
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nft: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
    }
    let out = child.wait_with_output().await.map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

impl Firewall {
    /// Creates (anew: what a previous run left is dropped) the table `name` (letters, digits
    /// and `_`), or says why apps' ports stay open to each other. `app_uids` are the apps'
    /// users, `router_ports` where the router listens.
    pub async fn setup(
        name: &str,
        app_uids: std::ops::RangeInclusive<u32>,
        router_ports: &[u16],
    ) -> Option<Self> {
        let uids = format!("{}-{}", app_uids.start(), app_uids.end());
        let router = router_ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let table: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        // `add` then `delete` removes a leftover table without failing when there is none.
        let script = format!(
            "add table inet {table}\ndelete table inet {table}\n\
             table inet {table} {{\n\
               set ports {{ type inet_service; }}\n\
               set owners {{ type inet_service . uid; }}\n\
               set router {{ type inet_service; elements = {{ {router} }} }}\n\
               set app_conns {{ type uid; size 65535; flags dynamic; }}\n\
               chain output {{\n\
                 type filter hook output priority 0; policy accept;\n\
                 meta skuid 0 return\n\
                 oifname \"lo\" tcp dport @ports ct state new tcp dport . meta skuid != @owners reject with tcp reset\n\
                 meta skuid {uids} ip daddr 169.254.0.0/16 reject\n\
                 meta skuid {uids} oifname \"lo\" tcp dport @router ct state new add @app_conns {{ meta skuid ct count over {APP_ROUTER_CONNECTIONS} }} reject with tcp reset\n\
               }}\n\
               chain input {{\n\
                 type filter hook input priority 0; policy accept;\n\
                 iifname != \"lo\" tcp dport @ports ct state new drop\n\
               }}\n\
             }}\n"
        );
        match nft(&script).await {
            Ok(()) => Some(Self { table }),
            Err(e) => {
                eprintln!("mar: nftables: {e}");
                None
            }
        }
    }

    /// Lets only `uid` (and root) connect to `port`.
    pub async fn guard(&self, port: u16, uid: u32) -> Result<(), String> {
        let t = &self.table;
        nft(&format!(
            "add element inet {t} owners {{ {port} . {uid} }}\nadd element inet {t} ports {{ {port} }}\n"
        ))
        .await
    }

    /// Forgets `port` (its instance stopped).
    pub async fn release(&self, port: u16, uid: u32) {
        let t = &self.table;
        let _ = nft(&format!("delete element inet {t} ports {{ {port} }}\n")).await;
        let _ = nft(&format!(
            "delete element inet {t} owners {{ {port} . {uid} }}\n"
        ))
        .await;
    }

    /// Removes the table, at shutdown.
    pub async fn remove(&self) {
        let _ = nft(&format!("delete table inet {}\n", self.table)).await;
    }
}
