//! What a request leaves behind for an operator besides its span: its id
//! (`x-request-id`, kept or made) and its access log line, written off the request
//! path by a writer thread behind a bounded queue.
//!
//! The request's trace (`trace::RequestTrace`) decides when a call is over and calls
//! [`log`]; this module knows only the line's fields and where it goes.

mod log;
mod request_id;
mod timestamp;
mod writer;

pub use log::{log, set_output, Entry, Output, ACCESS_LOG_TARGET};
pub use request_id::{never_indexed, new_request_id, REQUEST_ID};
pub use writer::{dropped_lines, stderr_writer, FlushGuard, LogWriter, QUEUED_LINES};
