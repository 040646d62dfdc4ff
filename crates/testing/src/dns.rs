//! A DNS server on loopback that the test controls: an authoritative UDP responder speaking the
//! real wire protocol (RFC 1035) on a real socket. It answers A and AAAA questions for the names
//! the test sets, with the TTL it chose; it can be told to answer SERVFAIL, or to stop
//! answering, as a failing server does.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How the server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The records it was given; NXDOMAIN for other names.
    Answer,
    /// SERVFAIL to every question.
    ServFail,
    /// No answer at all: every lookup times out.
    Silent,
}

struct Zone {
    /// Lower-case name → (addresses, TTL in seconds).
    records: BTreeMap<String, (Vec<IpAddr>, u32)>,
    mode: Mode,
}

/// The test DNS server; stopped when dropped.
pub struct DnsServer {
    /// Where it answers (UDP).
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    questions: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DnsServer {
    /// Starts a server on a UDP port of 127.0.0.1 the kernel picks, with no records.
    pub fn start() -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("a loopback UDP port");
        let addr = socket.local_addr().expect("a bound address");
        // A short read timeout lets the thread see `stop` soon after a drop.
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .expect("a read timeout");
        let zone = Arc::new(Mutex::new(Zone {
            records: BTreeMap::new(),
            mode: Mode::Answer,
        }));
        let questions = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("test-dns".to_string())
            .spawn({
                let (zone, questions, stop) =
                    (Arc::clone(&zone), Arc::clone(&questions), Arc::clone(&stop));
                move || serve(&socket, &zone, &questions, &stop)
            })
            .expect("the DNS server thread starts");
        DnsServer {
            addr,
            zone,
            questions,
            stop,
            thread: Some(thread),
        }
    }

    /// Answers `name` (any case, without the trailing dot) with `addresses` (A for IPv4, AAAA
    /// for IPv6) and `ttl` seconds from now on; an empty list answers NXDOMAIN.
    pub fn set(&self, name: &str, addresses: &[IpAddr], ttl: u32) {
        let mut zone = self.zone.lock().expect("the zone lock");
        if addresses.is_empty() {
            zone.records.remove(&name.to_ascii_lowercase());
        } else {
            zone.records
                .insert(name.to_ascii_lowercase(), (addresses.to_vec(), ttl));
        }
    }

    /// Answers, fails or keeps silent from now on.
    pub fn set_mode(&self, mode: Mode) {
        self.zone.lock().expect("the zone lock").mode = mode;
    }

    /// Questions received so far, answered or not.
    pub fn questions(&self) -> u64 {
        self.questions.load(Ordering::Relaxed)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(socket: &UdpSocket, zone: &Mutex<Zone>, questions: &AtomicU64, stop: &AtomicBool) {
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::Relaxed) {
        let Ok((n, peer)) = socket.recv_from(&mut buf) else {
            continue;
        };
        questions.fetch_add(1, Ordering::Relaxed);
        let zone = zone.lock().expect("the zone lock");
        if let Some(reply) = answer(&buf[..n], &zone) {
            let _ = socket.send_to(&reply, peer);
        }
    }
}

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const NOERROR: u8 = 0;
const SERVFAIL: u8 = 2;
const NXDOMAIN: u8 = 3;

/// The reply to one query; `None` for what is not a query, or in silent mode.
fn answer(query: &[u8], zone: &Zone) -> Option<Vec<u8>> {
    if zone.mode == Mode::Silent || query.len() < 12 || query[2] & 0x80 != 0 {
        return None;
    }
    // The question: labels up to the root, then type and class.
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*query.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        labels.push(String::from_utf8_lossy(query.get(at..at + len)?).to_ascii_lowercase());
        at += len;
    }
    let qtype = u16::from_be_bytes([*query.get(at)?, *query.get(at + 1)?]);
    let question_end = at + 4;
    let question = query.get(12..question_end)?;
    let name = labels.join(".");
    let (rcode, answers): (u8, Vec<(IpAddr, u32)>) = match (zone.mode, zone.records.get(&name)) {
        (Mode::ServFail, _) => (SERVFAIL, Vec::new()),
        (_, None) => (NXDOMAIN, Vec::new()),
        (_, Some((addrs, ttl))) => (
            NOERROR,
            addrs
                .iter()
                .filter(|ip| match ip {
                    IpAddr::V4(_) => qtype == TYPE_A,
                    IpAddr::V6(_) => qtype == TYPE_AAAA,
                })
                .map(|ip| (*ip, *ttl))
                .collect(),
        ),
    };
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&query[0..2]);
    // QR, the query's opcode and RD, AA; RA; the rcode.
    out.push(0x80 | (query[2] & 0x79) | 0x04);
    out.push(0x80 | rcode);
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(question);
    for (ip, ttl) in answers {
        // A pointer to the question's name at offset 12.
        out.extend_from_slice(&[0xc0, 12]);
        let (rtype, data): (u16, Vec<u8>) = match ip {
            IpAddr::V4(v4) => (TYPE_A, v4.octets().to_vec()),
            IpAddr::V6(v6) => (TYPE_AAAA, v6.octets().to_vec()),
        };
        out.extend_from_slice(&rtype.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&ttl.to_be_bytes());
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(&data);
    }
    Some(out)
}
