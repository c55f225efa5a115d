//! What the targets share.

/// The server catches the panics of ruma's deserialisers (a malformed body
/// is a 400, not a crash), but libFuzzer's panic hook aborts at any panic,
/// caught or not. The default hook is put back instead (it prints, and
/// goes on); a panic the server does not catch still ends the run, as
/// `fuzz_target!` aborts on it.
pub fn quiet_caught_panics() {
    drop(std::panic::take_hook());
}

/// A request as the HTTP layer hands it over, body read.
pub fn request(method: &str, uri: &str, body: &[u8]) -> Option<http::Request<bytes::Bytes>> {
    http::Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .header("authorization", "Bearer fuzz")
        .body(bytes::Bytes::copy_from_slice(body))
        .ok()
}
