//! Bytes an upstream writes on an HTTP/1.1 connection of remora's own client
//! (`src/core/http1/`): the answer's head parser, then the chunked body decoder when the
//! head says chunked. The first byte picks the size of the reads the bytes come in and
//! whether the request was a `HEAD`. Never panics; the outcome does not depend on the
//! reads; the framing follows the status, `Content-Length` and `Transfer-Encoding`; a
//! connection is never kept after a close-delimited body or a `close`; the decoded data
//! is never longer than the body.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    remora::fuzzing::http1_answer(data);
});
