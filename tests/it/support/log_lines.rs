//! Log lines captured in a test: the access log (`remora::access`) written through a
//! `tracing` subscriber set for the test's thread.

/// Log output kept in memory.
#[derive(Clone, Default)]
pub struct LogLines(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogLines {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogLines {
    pub fn capture(&self) -> tracing::subscriber::DefaultGuard {
        let lines = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || lines.clone())
            .with_ansi(false)
            .with_env_filter("remora::access=info")
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// The access log lines of requests to `path`.
    pub fn access(&self, path: &str) -> Vec<String> {
        let text = self.text();
        let path = format!("path={path:?} ");
        text.lines()
            .filter(|line| line.contains("remora::access") && line.contains(&path))
            .map(str::to_string)
            .collect()
    }
}
