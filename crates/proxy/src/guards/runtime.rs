//! The background thread on which the Redis integrations run.

/// A thread running a Tokio runtime for the Redis integrations (connections, segment
/// refreshes), so they work whatever thread builds a snapshot. Stops when dropped.
pub(super) struct RedisRuntime {
    pub(super) handle: tokio::runtime::Handle,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl RedisRuntime {
    pub(super) fn start() -> std::io::Result<RedisRuntime> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("graylane-redis".to_string())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        Ok(RedisRuntime {
            handle,
            _stop: stop,
        })
    }
}
