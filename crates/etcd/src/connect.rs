//! The connection to etcd, and the bridge from the controller's blocking calls to the async
//! client: the client runs on a small runtime of its own, so a blocking caller (an admin
//! request on a blocking thread, the controller's tick) waits for an answer without holding up
//! the gateway's runtime, and every call is bounded by a timeout.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, TlsOptions};
use graylane_store::StoreError;

/// How to reach etcd.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// `http://host:port` or `https://host:port`, one or more.
    pub endpoints: Vec<String>,
    /// Where graylane's keys live (default `/graylane`).
    pub prefix: String,
    /// A PEM file of the certificate authority that signed etcd's certificate (`https://`).
    pub ca: Option<PathBuf>,
    /// User name and password for etcd's authentication.
    pub user: Option<(String, String)>,
    /// How long one call may take before it counts as etcd being unavailable.
    pub timeout: Duration,
}

impl EtcdOptions {
    /// The client's options for these: timeouts, keep-alive pings, TLS with the CA, the user.
    /// For tools that drive an `etcd_client::Client` of their own (`graylane register`).
    pub fn connect_options(&self) -> Result<ConnectOptions, StoreError> {
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(self.timeout)
            .with_keep_alive(Duration::from_secs(2), self.timeout)
            .with_keep_alive_while_idle(true);
        if let Some(ca) = &self.ca {
            let pem = std::fs::read(ca).map_err(|e| StoreError::Unavailable {
                endpoints: self.endpoints.join(","),
                context: "reading --etcd-ca".to_string(),
                cause: format!("cannot read {}: {e}", ca.display()),
            })?;
            connect =
                connect.with_tls(TlsOptions::new().ca_certificate(Certificate::from_pem(pem)));
        }
        if let Some((user, password)) = &self.user {
            connect = connect.with_user(user, password);
        }
        Ok(connect)
    }

    /// Plaintext, no authentication, the default prefix and a 2 s timeout.
    pub fn new(endpoints: Vec<String>) -> EtcdOptions {
        EtcdOptions {
            endpoints,
            prefix: "/graylane".to_string(),
            ca: None,
            user: None,
            timeout: Duration::from_secs(2),
        }
    }
}

/// A connected etcd client with the runtime it runs on.
#[derive(Clone)]
pub struct Etcd {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    /// Always `Some` until dropped.
    runtime: Option<tokio::runtime::Runtime>,
    endpoints: String,
    prefix: String,
    timeout: Duration,
}

impl Etcd {
    /// Connects to etcd (and authenticates, with a user). Fails if no endpoint answers within
    /// the timeout: a node cannot know its configuration without the store.
    pub fn connect(options: &EtcdOptions) -> Result<Etcd, StoreError> {
        let endpoints = options.endpoints.join(",");
        let unavailable = |context: &str, cause: String| StoreError::Unavailable {
            endpoints: endpoints.clone(),
            context: context.to_string(),
            cause,
        };
        if options.endpoints.is_empty() {
            return Err(unavailable("connecting", "no endpoint given".to_string()));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("graylane-etcd")
            .enable_all()
            .build()
            .map_err(|e| unavailable("starting the etcd client", e.to_string()))?;
        let connect = options.connect_options()?;
        let client = runtime
            .block_on(async {
                tokio::time::timeout(
                    options.timeout,
                    Client::connect(&options.endpoints, Some(connect)),
                )
                .await
            })
            .map_err(|_| unavailable("connecting", "no answer within the timeout".into()))?
            .map_err(|e| unavailable("connecting", e.to_string()))?;
        let etcd = Etcd {
            inner: Arc::new(Inner {
                client,
                runtime: Some(runtime),
                endpoints,
                prefix: options.prefix.trim_end_matches('/').to_string(),
                timeout: options.timeout,
            }),
        };
        // A first call proves the endpoint is etcd and the credentials work.
        etcd.call(
            "connecting",
            |mut c| async move { c.status().await.map(|_| ()) },
        )?;
        Ok(etcd)
    }

    /// A client to use on [`Etcd::handle`]'s runtime.
    pub fn client(&self) -> Client {
        self.inner.client.clone()
    }

    /// The runtime the client runs on, for background tasks that talk to etcd.
    pub fn handle(&self) -> tokio::runtime::Handle {
        self.inner.runtime().handle().clone()
    }

    /// The endpoints, as given, for messages.
    pub fn endpoints(&self) -> &str {
        &self.inner.endpoints
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The per-call timeout.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// The error for a call that failed while `context`.
    pub fn unavailable(&self, context: &str, cause: impl ToString) -> StoreError {
        StoreError::Unavailable {
            endpoints: self.inner.endpoints.clone(),
            context: context.to_string(),
            cause: cause.to_string(),
        }
    }

    /// Runs `call` on the client's runtime and waits for it, at most the timeout. Callable
    /// from any thread except the client runtime's own (which would wait on itself).
    pub fn call<T, F, Fut>(&self, context: &str, call: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let fut = call(self.client());
        let timeout = self.inner.timeout;
        self.inner.runtime().spawn(async move {
            let _ = tx.send(tokio::time::timeout(timeout, fut).await);
        });
        match rx.recv() {
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err(e))) => Err(self.unavailable(context, e)),
            Ok(Err(_)) => Err(self.unavailable(context, format!("no answer within {timeout:?}"))),
            Err(_) => Err(self.unavailable(context, "the etcd client stopped")),
        }
    }
}

impl Inner {
    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime
            .as_ref()
            .expect("the runtime lives as long as the client")
    }
}

impl Drop for Inner {
    /// The last handle may be dropped on an async thread, where dropping a runtime in place
    /// would panic: its tasks are left to end on their own.
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
