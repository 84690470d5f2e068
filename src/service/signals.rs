//! Unix signals of the daemon, turned into [`Control`] events for the server:
//!
//! * SIGTERM / SIGINT: graceful shutdown (drain, offline status, exit 0). A second one exits at
//!   once with 128 + the signal number: the operator chose not to wait for the drain.
//! * SIGHUP: reload the configuration (`systemctl reload llamabus`).

use std::future::Future;

use log::{error, info, warn};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};

/// What the signal task reports to the server.
#[derive(Debug)]
pub struct Control {
    /// Becomes true on the first SIGTERM/SIGINT.
    shutdown: watch::Receiver<bool>,
    /// Held by [`Control::none`] so that `shutdown` never closes.
    _never: Option<watch::Sender<bool>>,
    /// One message per SIGHUP.
    pub reload: mpsc::UnboundedReceiver<()>,
}

impl Control {
    /// Events that never come: for callers (tests) that stop the server another way.
    pub fn none() -> Control {
        let (tx, shutdown) = watch::channel(false);
        let (_, reload) = mpsc::unbounded_channel();
        Control {
            shutdown,
            _never: Some(tx),
            reload,
        }
    }

    /// Completes on the first SIGTERM/SIGINT.
    pub fn shutdown(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.shutdown.clone();
        async move {
            while !*rx.borrow_and_update() {
                if rx.changed().await.is_err() {
                    return std::future::pending().await;
                }
            }
        }
    }
}

/// Installs the handlers (call inside the tokio runtime) and returns the events.
pub fn install() -> std::io::Result<Control> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let (stx, shutdown) = watch::channel(false);
    let (rtx, reload) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (name, number) = tokio::select! {
                _ = term.recv() => ("SIGTERM", 15),
                _ = int.recv() => ("SIGINT", 2),
                _ = hup.recv() => {
                    info!("SIGHUP: reloading the configuration");
                    let _ = rtx.send(());
                    continue;
                }
            };
            if *stx.borrow() {
                warn!("second {name}: exiting at once, without draining");
                log::logger().flush();
                std::process::exit(128 + number);
            }
            info!("{name}: shutting down");
            if stx.send(true).is_err() {
                error!("{name}: nobody is listening for shutdown; exiting");
                std::process::exit(128 + number);
            }
        }
    });
    Ok(Control {
        shutdown,
        _never: None,
        reload,
    })
}
