//! Which apps each MWS gateway is attached to, held in memory so a gateway forwarding its
//! clients' frames finds the app without a SQLite call on the gateways' thread. Reloaded from
//! the store whenever an attachment can have changed (attach, detach, an app or a service
//! destroyed).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::RwLock;

use mar_store::Store;

/// The gateways' attached apps, and where the router listens.
pub(crate) struct GatewayLinks {
    /// Gateway id → the apps it is attached to, by name.
    attached: RwLock<HashMap<String, Vec<String>>>,
    /// The router's plain HTTP listener, as a client on this host reaches it.
    router: SocketAddr,
    /// Apps are `APP.<domain>`.
    domain: String,
}

impl GatewayLinks {
    /// Links as the store has them now.
    pub(crate) fn new(store: &Store, router: SocketAddr, domain: &str) -> mar_store::Result<Self> {
        let links = Self {
            attached: RwLock::new(HashMap::new()),
            router,
            domain: domain.to_owned(),
        };
        links.reload(store)?;
        Ok(links)
    }

    /// Reads the attachments again (a blocking SQLite read: called from the platform's API).
    pub(crate) fn reload(&self, store: &Store) -> mar_store::Result<()> {
        let mut map = HashMap::new();
        for s in store.list_services()? {
            map.insert(s.id.clone(), store.attachments_of(&s.name)?);
        }
        *self.attached.write().unwrap_or_else(|e| e.into_inner()) = map;
        Ok(())
    }

    /// Where gateway `id` forwards to: the named app if it is attached, or its only app.
    pub(crate) fn resolve(&self, id: &str, app: Option<&str>) -> Result<mar_mws::Target, String> {
        let map = self.attached.read().unwrap_or_else(|e| e.into_inner());
        let apps = map.get(id).map(Vec::as_slice).unwrap_or_default();
        let app = match (app, apps) {
            (Some(a), _) if apps.iter().any(|x| x == a) => a,
            (Some(a), _) => return Err(format!("the gateway is not attached to {a}")),
            (None, [only]) => only.as_str(),
            (None, []) => {
                return Err(
                    "the gateway is attached to no app: mar services:attach NAME -a APP".to_owned(),
                );
            }
            (None, many) => {
                return Err(format!(
                    "the gateway is attached to {}: name one as forward.app",
                    many.join(", ")
                ));
            }
        };
        Ok(mar_mws::Target {
            addr: self.router,
            host: format!("{app}.{}", self.domain),
        })
    }
}
