//! A mocked Kubernetes API server for tests (tower-test): each test states
//! the conversation it expects, request by request, and answers it.

use http::{Request, Response};
use kube::client::Body;
use serde_json::Value;

/// The API server's side of a mocked client.
pub(crate) struct MockApi {
    handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
}

/// A client whose every request goes to the returned [`MockApi`].
pub(crate) fn mock_client() -> (kube::Client, MockApi) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, "default"), MockApi { handle })
}

/// One request as the server saw it.
#[derive(Debug)]
pub(crate) struct Seen {
    pub(crate) query: String,
    pub(crate) body: Value,
}

impl MockApi {
    /// Waits for the next request, checks its method and path, answers with
    /// `status` and `reply` (`Value::Null`: the request's own body, as an
    /// apply or create returns the object), and returns what was sent.
    pub(crate) async fn expect(&mut self, method: &str, path: &str, status: u16, reply: Value) -> Seen {
        let (request, send) =
            tokio::time::timeout(std::time::Duration::from_secs(10), self.handle.next_request())
                .await
                .unwrap_or_else(|_| panic!("no request came; expected {method} {path}"))
                .unwrap_or_else(|| panic!("the client went away; expected {method} {path}"));
        let seen_method = request.method().to_string();
        let seen_path = request.uri().path().to_string();
        let query = request.uri().query().unwrap_or_default().to_string();
        let bytes = request.into_body().collect_bytes().await.expect("a request body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        assert_eq!((seen_method.as_str(), seen_path.as_str()), (method, path), "unexpected request {body}");
        let reply = if reply.is_null() { body.clone() } else { reply };
        let response = Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&reply).expect("JSON")))
            .expect("a response");
        send.send_response(response);
        Seen { query, body }
    }

    /// Answers the next request with a Kubernetes Status error.
    pub(crate) async fn refuse(&mut self, method: &str, path: &str, code: u16, reason: &str) -> Seen {
        let status = serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": format!("{reason} (mocked)"), "reason": reason, "code": code
        });
        self.expect(method, path, code, status).await
    }

    /// Asserts that no further request comes (within a short wait).
    pub(crate) async fn expect_silence(&mut self) {
        let next =
            tokio::time::timeout(std::time::Duration::from_millis(200), self.handle.next_request()).await;
        if let Ok(Some((request, _))) = next {
            panic!("unexpected request {} {}", request.method(), request.uri());
        }
    }
}
