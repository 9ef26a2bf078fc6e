//! Where an app's traffic goes, decided from plain data: whether it runs a release, whether
//! that release declares `web`, and the state of each web instance. No locks, no I/O, so every
//! answer (H14 three ways, H10, H20, or the instances that are up) is unit-tested here, and
//! `Apps::publish` only gathers the data and publishes the result.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use mar_core::AppName;
use mar_router::{AppTarget, InProcessTarget, Unavailable, Upstream};
use mar_supervisor::State;
use tokio_util::sync::CancellationToken;

use super::{Running, Workload};

/// One web instance as the routing policy sees it.
pub(crate) struct WebInstance {
    /// `web.1`, for the access log.
    pub dyno: String,
    /// Its state now; only `Up` with a port gets traffic.
    pub state: State,
    /// Requests in flight to it, shared with the router's upstream.
    pub load: Arc<AtomicUsize>,
    /// Cancelled when it is retired, shared with the router's upstream.
    pub retire: CancellationToken,
}

/// The running release of an app, reduced to what routing needs.
pub(crate) struct ReleaseWeb {
    /// The handler of a WASM release, which takes all of its traffic.
    pub in_process: Option<InProcessTarget>,
    /// Whether the release's Procfile has a `web` process type.
    pub declares_web: bool,
    /// Its web instances (none when scaled to zero).
    pub web: Vec<WebInstance>,
}

impl ReleaseWeb {
    /// Snapshots a running release's web instances.
    pub(crate) fn of(run: &Running) -> Self {
        let in_process = match &run.workload {
            Workload::Handler(w) => Some(w.target.clone()),
            Workload::Processes(_) => None,
        };
        let web = match &run.workload {
            Workload::Handler(_) => Vec::new(),
            Workload::Processes(slots) => slots
                .iter()
                .filter(|s| s.instance.spec().process_type == "web")
                .map(|s| WebInstance {
                    dyno: s.instance.spec().dyno(),
                    state: s.instance.state(),
                    load: s.load.clone(),
                    retire: s.retire.clone(),
                })
                .collect(),
        };
        Self {
            in_process,
            declares_web: run.release.process_types.contains_key("web"),
            web,
        }
    }
}

const NO_WEB: &str = "No web processes running";

/// The route target of `app`: its web instances that are up, or the error page that says why
/// there are none. `release` is `None` when the app runs no release (never deployed, or only
/// config changes so far).
pub(crate) fn route_target(app: &AppName, release: Option<ReleaseWeb>) -> AppTarget {
    let Some(release) = release else {
        return unavailable(
            "H14",
            NO_WEB,
            format!("The app {app} has no release yet. Deploy it with `git push`."),
        );
    };
    if let Some(target) = release.in_process {
        return AppTarget::InProcess(target);
    }
    let ups: Vec<Upstream> = release
        .web
        .iter()
        .filter_map(|w| match w.state {
            State::Up {
                port: Some(port), ..
            } => Some(Upstream {
                addr: ([127, 0, 0, 1], port).into(),
                dyno: w.dyno.clone(),
                load: w.load.clone(),
                retire: w.retire.clone(),
                refused_until: Default::default(),
            }),
            _ => None,
        })
        .collect();
    if !ups.is_empty() {
        AppTarget::Upstreams(ups)
    } else if !release.declares_web {
        unavailable(
            "H14",
            NO_WEB,
            format!(
                "The current release of {app} declares no `web` process type. Add `web: COMMAND` to its Procfile and push again."
            ),
        )
    } else if release.web.is_empty() {
        unavailable(
            "H14",
            NO_WEB,
            format!(
                "{app} is scaled to zero web processes. Scale up with `mar ps:scale web=1 -a {app}`."
            ),
        )
    } else if release
        .web
        .iter()
        .any(|w| matches!(w.state, State::Crashed { .. }))
    {
        // None is up, so the crashed ones are why: say so rather than "booting", which would
        // have the user wait for something that will not come without a fix.
        unavailable(
            "H10",
            "App crashed",
            format!(
                "Every web process of {app} has crashed. See `mar logs -a {app}`; it is being restarted."
            ),
        )
    } else {
        unavailable(
            "H20",
            "App boot in progress",
            "The app's web process is starting. Try again in a moment.".to_owned(),
        )
    }
}

fn unavailable(code: &'static str, desc: &'static str, hint: String) -> AppTarget {
    AppTarget::Unavailable(Unavailable { code, desc, hint })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> AppName {
        AppName::parse("shop").unwrap()
    }

    fn web(n: u32, state: State) -> WebInstance {
        WebInstance {
            dyno: format!("web.{n}"),
            state,
            load: Arc::new(AtomicUsize::new(0)),
            retire: CancellationToken::new(),
        }
    }

    fn up(port: u16) -> State {
        State::Up {
            pid: 42,
            port: Some(port),
            since: std::time::SystemTime::now(),
        }
    }

    fn crashed() -> State {
        State::Crashed {
            reason: "exit 1".to_owned(),
        }
    }

    fn release(declares_web: bool, web: Vec<WebInstance>) -> Option<ReleaseWeb> {
        Some(ReleaseWeb {
            in_process: None,
            declares_web,
            web,
        })
    }

    #[test]
    fn a_wasm_release_takes_its_traffic_in_process() {
        struct Nothing;
        impl mar_http::Handler for Nothing {
            fn call(&self, _: http::Request<mar_http::Body>) -> mar_http::ResponseFuture {
                Box::pin(async { http::Response::new(mar_http::empty()) })
            }
        }
        let target = InProcessTarget::new("wasm", std::sync::Arc::new(Nothing));
        let t = route_target(
            &app(),
            Some(ReleaseWeb {
                in_process: Some(target),
                declares_web: false,
                web: vec![],
            }),
        );
        let AppTarget::InProcess(t) = t else {
            panic!("expected the handler");
        };
        assert_eq!(t.name, "wasm");
    }

    /// The code and hint of an error target; panics on any other target.
    fn error(t: AppTarget) -> (&'static str, String) {
        match t {
            AppTarget::Unavailable(u) => (u.code, u.hint),
            _ => panic!("expected an error page"),
        }
    }

    #[test]
    fn no_release_is_h14_saying_deploy() {
        let (code, hint) = error(route_target(&app(), None));
        assert_eq!(code, "H14");
        assert!(hint.contains("no release yet"), "{hint}");
    }

    #[test]
    fn release_without_web_is_h14_saying_add_web() {
        let (code, hint) = error(route_target(&app(), release(false, vec![])));
        assert_eq!(code, "H14");
        assert!(hint.contains("declares no `web`"), "{hint}");
    }

    #[test]
    fn scaled_to_zero_is_h14_saying_scale_up() {
        let (code, hint) = error(route_target(&app(), release(true, vec![])));
        assert_eq!(code, "H14");
        assert!(hint.contains("mar ps:scale web=1 -a shop"), "{hint}");
    }

    #[test]
    fn all_crashed_is_h10() {
        let t = route_target(
            &app(),
            release(true, vec![web(1, crashed()), web(2, crashed())]),
        );
        assert_eq!(error(t).0, "H10");
    }

    #[test]
    fn crashed_and_booting_with_none_up_is_h10() {
        let t = route_target(
            &app(),
            release(true, vec![web(1, crashed()), web(2, State::Starting)]),
        );
        assert_eq!(error(t).0, "H10");
    }

    #[test]
    fn booting_is_h20() {
        let t = route_target(
            &app(),
            release(true, vec![web(1, State::Starting), web(2, State::Down)]),
        );
        assert_eq!(error(t).0, "H20");
    }

    #[test]
    fn up_instances_are_the_upstreams_and_the_others_wait() {
        let first = web(1, up(5001));
        let load = first.load.clone();
        let t = route_target(
            &app(),
            release(
                true,
                vec![
                    first,
                    web(2, State::Starting),
                    web(3, crashed()),
                    web(4, up(5004)),
                    // Up without a port cannot be reached.
                    web(
                        5,
                        State::Up {
                            pid: 7,
                            port: None,
                            since: std::time::SystemTime::now(),
                        },
                    ),
                ],
            ),
        );
        let AppTarget::Upstreams(ups) = t else {
            panic!("expected upstreams");
        };
        let got: Vec<(String, u16)> = ups
            .iter()
            .map(|u| (u.dyno.clone(), u.addr.port()))
            .collect();
        assert_eq!(
            got,
            [("web.1".to_owned(), 5001), ("web.4".to_owned(), 5004)]
        );
        assert!(ups[0].addr.ip().is_loopback());
        // The router counts requests on the slot's own counter, so retiring can wait for them.
        assert!(Arc::ptr_eq(&ups[0].load, &load));
    }

    #[test]
    fn a_release_without_web_still_routes_to_up_web_instances() {
        // Order of the original policy: instances that are up win over what the release says.
        let t = route_target(&app(), release(false, vec![web(1, up(5001))]));
        assert!(matches!(t, AppTarget::Upstreams(ref u) if u.len() == 1));
    }
}
