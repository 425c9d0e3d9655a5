//! A stand-in PCCS (Intel's Provisioning Certificate Caching Service, API v4) over HTTPS on
//! 127.0.0.1:0, serving the real sample collateral of [`crate::tdx`] the way a PCCS does:
//!
//! - `GET /sgx/certification/v4/pckcrl?ca=platform&encoding=der`: the PCK CRL as DER, its
//!   issuer chain URL-encoded in `SGX-PCK-CRL-Issuer-Chain`;
//! - `GET /tdx/certification/v4/tcb?fmspc=B0C06F000000`: `{"tcbInfo": …, "signature": …}`, the
//!   chain in `TCB-Info-Issuer-Chain`;
//! - `GET /tdx/certification/v4/qe/identity`: `{"enclaveIdentity": …, "signature": …}`, the
//!   chain in `SGX-Enclave-Identity-Issuer-Chain`;
//! - `GET /sgx/certification/v4/rootcacrl`: Intel's root CA CRL, hex-encoded.
//!
//! Another FMSPC or CA is answered 404 ("no cache data for this platform"), as a PCCS does.
//! A [`PccsFault`] makes it misbehave the ways a client must survive; every request is
//! recorded.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use tokio::net::TcpListener;

use crate::tdx::{SAMPLE_COLLATERAL, SAMPLE_FMSPC, SAMPLE_PCK_CA};
use crate::upstream::{serve_tls, test_tls};

/// How the stand-in misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PccsFault {
    /// Answers as a PCCS does.
    #[default]
    None,
    /// Every request: 500.
    ServerError,
    /// The TCB info answer lacks its issuer chain header.
    MissingIssuerChain,
    /// Every request: 302 to another host.
    Redirect,
    /// Every answer waits this long first.
    Slow(Duration),
    /// The TCB info answer is 5 MiB.
    Oversize,
    /// The TCB info is answered with one character of the signed JSON changed.
    TamperedTcbInfo,
}

/// A running stand-in PCCS.
pub struct Pccs {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The CA that signed its TLS certificate, PEM (for `--pccs-ca`).
    pub ca_pem: Vec<u8>,
    requests: Arc<Mutex<Vec<String>>>,
    fault: Arc<Mutex<PccsFault>>,
}

impl Pccs {
    /// Starts it with a fresh CA and a leaf for 127.0.0.1 and localhost.
    pub async fn start() -> Pccs {
        let (acceptor, ca_pem) = test_tls(&["127.0.0.1", "localhost"]);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let fault = Arc::new(Mutex::new(PccsFault::None));
        let (recorded, faulty) = (requests.clone(), fault.clone());
        serve_tls(listener, acceptor, move |req| {
            let path = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default();
            recorded.lock().expect("requests lock").push(path);
            let fault = *faulty.lock().expect("fault lock");
            answer(req, fault)
        });
        Pccs {
            addr,
            ca_pem,
            requests,
            fault,
        }
    }

    /// `https://127.0.0.1:<port>`: the base URL a client is given.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    /// From now on, misbehave so.
    pub fn set_fault(&self, fault: PccsFault) {
        *self.fault.lock().expect("fault lock") = fault;
    }

    /// Path and query of every request so far.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("requests lock").clone()
    }
}

fn field(name: &str) -> String {
    let all: serde_json::Value = serde_json::from_str(SAMPLE_COLLATERAL).expect("sample JSON");
    all[name].as_str().expect("sample field").to_owned()
}

fn chain(name: &str) -> String {
    utf8_percent_encode(&field(name), NON_ALPHANUMERIC).to_string()
}

fn reply(status: u16, headers: &[(&str, String)], body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::builder().status(status);
    for (k, v) in headers {
        r = r.header(*k, v);
    }
    r.body(Full::new(body.into())).expect("response")
}

async fn answer(req: Request<Incoming>, fault: PccsFault) -> Response<Full<Bytes>> {
    if let PccsFault::Slow(wait) = fault {
        tokio::time::sleep(wait).await;
    }
    match fault {
        PccsFault::ServerError => return reply(500, &[], "internal error"),
        PccsFault::Redirect => {
            return reply(
                302,
                &[("location", "https://pccs.elsewhere.test/".to_owned())],
                "",
            );
        }
        _ => {}
    }
    let query: Vec<(String, String)> =
        url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let json = [("content-type", "application/json".to_owned())];
    let unknown = || reply(404, &[], "No cache data for this platform");
    match req.uri().path() {
        "/sgx/certification/v4/pckcrl" => {
            if param("ca") != Some(SAMPLE_PCK_CA) || param("encoding") != Some("der") {
                return unknown();
            }
            let der = hex::decode(field("pck_crl")).expect("sample CRL hex");
            reply(
                200,
                &[("SGX-PCK-CRL-Issuer-Chain", chain("pck_crl_issuer_chain"))],
                der,
            )
        }
        "/tdx/certification/v4/tcb" => {
            if !param("fmspc").is_some_and(|f| f.eq_ignore_ascii_case(SAMPLE_FMSPC)) {
                return unknown();
            }
            let mut tcb = field("tcb_info");
            if fault == PccsFault::TamperedTcbInfo {
                tcb = tcb.replacen("\"version\":3", "\"version\":4", 1);
            }
            let body = format!(
                "{{\"tcbInfo\": {tcb}, \"signature\": \"{}\"}}",
                field("tcb_info_signature")
            );
            let body = if fault == PccsFault::Oversize {
                format!("{body}{}", " ".repeat(5 * 1024 * 1024))
            } else {
                body
            };
            let mut headers = json.to_vec();
            if fault != PccsFault::MissingIssuerChain {
                headers.push(("TCB-Info-Issuer-Chain", chain("tcb_info_issuer_chain")));
            }
            reply(200, &headers, body)
        }
        "/tdx/certification/v4/qe/identity" => {
            let body = format!(
                "{{\"enclaveIdentity\":{},\"signature\":\"{}\"}}",
                field("qe_identity"),
                field("qe_identity_signature")
            );
            let mut headers = json.to_vec();
            headers.push((
                "SGX-Enclave-Identity-Issuer-Chain",
                chain("qe_identity_issuer_chain"),
            ));
            reply(200, &headers, body)
        }
        "/sgx/certification/v4/rootcacrl" => reply(200, &[], field("root_ca_crl")),
        _ => reply(404, &[], "not a PCCS v4 path"),
    }
}
