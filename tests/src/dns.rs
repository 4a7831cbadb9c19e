//! An in-process authoritative DNS server for tests and `herd`: it serves the collector fleet's
//! A records (and optionally SRV records) with a chosen TTL, can be told to answer every query
//! with a single record (the caching pathology this product exists for), can change its records
//! while running, and can be stopped (lookups then time out).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA, SRV};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;

/// The zone the fixture serves, and the fleet name in it.
pub const ZONE: &str = "ringflow.test.";
pub const FLEET_NAME: &str = "collectors.ringflow.test";

/// What the server answers; change it while running with [`DnsServer::update`].
#[derive(Debug, Clone)]
pub struct Records {
    /// A records of the fleet name.
    pub a: Vec<Ipv4Addr>,
    /// SRV records of `_ringflow._udp.<fleet>`: (port, target host).
    pub srv: Vec<(u16, Name)>,
    /// TTL of every answer.
    pub ttl: u32,
    /// Answer each A query with only the first address.
    pub single_answer: bool,
}

struct Zone {
    origin: LowerName,
    fleet: LowerName,
    srv_name: LowerName,
    soa: Record,
    records: Mutex<Records>,
    queries: AtomicUsize,
}

#[derive(Clone)]
struct Handler(Arc<Zone>);

impl Handler {
    fn answer(
        &self,
        qname: &LowerName,
        name: &Name,
        qtype: RecordType,
    ) -> (ResponseCode, Vec<Record>, Vec<Record>) {
        let zone = &*self.0;
        if !zone.origin.zone_of(qname) {
            return (ResponseCode::Refused, vec![], vec![]);
        }
        let r = zone.records.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut answers = Vec::new();
        let exists = if *qname == zone.fleet {
            if qtype == RecordType::A {
                let n = if r.single_answer {
                    r.a.len().min(1)
                } else {
                    r.a.len()
                };
                answers.extend(
                    r.a.iter()
                        .take(n)
                        .map(|ip| Record::from_rdata(name.clone(), r.ttl, RData::A(A(*ip)))),
                );
            }
            true
        } else if *qname == zone.srv_name {
            if qtype == RecordType::SRV {
                answers.extend(r.srv.iter().map(|(port, target)| {
                    Record::from_rdata(
                        name.clone(),
                        r.ttl,
                        RData::SRV(SRV::new(10, 10, *port, target.clone())),
                    )
                }));
            }
            true
        } else {
            *qname == zone.origin
        };
        let soa = vec![zone.soa.clone()];
        if !answers.is_empty() {
            (ResponseCode::NoError, answers, vec![])
        } else if exists {
            (ResponseCode::NoError, vec![], soa)
        } else {
            (ResponseCode::NXDomain, vec![], soa)
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        self.0.queries.fetch_add(1, Ordering::Relaxed);
        let edns = request.edns.as_ref().map(|req| {
            let mut e = Edns::new();
            e.set_max_payload(req.max_payload().max(512));
            e
        });
        let builder = MessageResponseBuilder::new(&request.queries, edns.as_ref());
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        metadata.recursion_available = false;
        let (code, answers, authority) = match request.request_info() {
            Ok(info)
                if request.metadata.op_code == OpCode::Query
                    && request.metadata.message_type == MessageType::Query =>
            {
                self.answer(
                    info.query.name(),
                    info.query.original().name(),
                    info.query.query_type(),
                )
            }
            Ok(_) => (ResponseCode::NotImp, vec![], vec![]),
            Err(_) => (ResponseCode::FormErr, vec![], vec![]),
        };
        metadata.response_code = code;
        let message = builder.build(
            metadata,
            answers.iter(),
            std::iter::empty(),
            authority.iter(),
            std::iter::empty(),
        );
        match response.send_response(message).await {
            Ok(info) => info,
            Err(_) => {
                let mut m = Metadata::response_from_request(&request.metadata);
                m.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata: m,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}

/// A running DNS server on a loopback UDP port.
pub struct DnsServer {
    addr: SocketAddr,
    zone: Arc<Zone>,
    server: Server<Handler>,
}

impl DnsServer {
    /// Serves [`FLEET_NAME`] in [`ZONE`] on `127.0.0.1:0`.
    pub async fn start(records: Records) -> anyhow::Result<Self> {
        let origin = Name::from_ascii(ZONE)?;
        let fleet = Name::from_ascii(FLEET_NAME)?.append_domain(&Name::root())?;
        let srv_name = Name::from_ascii("_ringflow._udp")?.append_domain(&fleet)?;
        let soa = SOA::new(
            Name::from_ascii("ns")?.append_domain(&origin)?,
            Name::from_ascii("hostmaster")?.append_domain(&origin)?,
            1,
            3600,
            600,
            86400,
            1,
        );
        let zone = Arc::new(Zone {
            origin: LowerName::from(&origin),
            fleet: LowerName::from(&fleet),
            srv_name: LowerName::from(&srv_name),
            soa: Record::from_rdata(origin, 1, RData::SOA(soa)),
            records: Mutex::new(records),
            queries: AtomicUsize::new(0),
        });
        let socket = tokio::net::UdpSocket::bind(("127.0.0.1", 0)).await?;
        let addr = socket.local_addr()?;
        let mut server = Server::new(Handler(Arc::clone(&zone)));
        server.register_socket(socket);
        Ok(DnsServer { addr, zone, server })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes what the server answers.
    pub fn update(&self, f: impl FnOnce(&mut Records)) {
        f(&mut self.zone.records.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Queries answered so far.
    pub fn queries(&self) -> usize {
        self.zone.queries.load(Ordering::Relaxed)
    }

    /// Stops serving; lookups against it then time out.
    pub async fn stop(mut self) {
        let _ = self.server.shutdown_gracefully().await;
    }
}
