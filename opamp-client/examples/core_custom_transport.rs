//! Driving the sans-IO `ClientCore` over a transport of your own: here a
//! plain TCP stream carrying length-prefixed protobuf messages, with no
//! async runtime at all.
//!
//! ```sh
//! cargo run -p opamp-client --example core_custom_transport
//! ```
//!
//! The core owns the protocol (what to send and when, sequence numbers,
//! heartbeats, reconnect timing); the driver below only moves bytes and
//! tells the core what happened and what time it is. A toy server thread
//! answers every message and offers a configuration once; the agent applies
//! it, sends two heartbeats, then says goodbye.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use opamp_client::proto::{
    AgentConfigMap, AgentConfigObject, AgentRemoteConfig, AgentToServer, Message,
    RemoteConfigStatus, RemoteConfigStatuses, ServerCapabilities, ServerToAgent,
};
use opamp_client::{
    AgentCapabilities, AgentDescription, ClientCore, CoreConfig, Event, ExponentialBackoff,
    InstanceUid, TransportKind,
};

/// The framing of this transport: a 4-byte big-endian length, then the message.
fn write_frame(stream: &mut TcpStream, message: &impl Message) -> io::Result<()> {
    let body = message.encode_to_vec();
    let length = u32::try_from(body.len()).map_err(io::Error::other)?;
    stream.write_all(&length.to_be_bytes())?;
    stream.write_all(&body)
}

/// Reads one frame; `None` when the peer closed the stream.
fn read_frame<M: Message + Default>(stream: &mut TcpStream) -> io::Result<Option<M>> {
    let mut length = [0; 4];
    match stream.read_exact(&mut length) {
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        other => other?,
    }
    let length = u32::from_be_bytes(length) as usize;
    if length > 4 << 20 {
        return Err(io::Error::other("frame too large"));
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body)?;
    Ok(Some(M::decode(body.as_slice()).map_err(io::Error::other)?))
}

/// A toy server: answers every message, offers a configuration in its first reply.
fn serve(mut stream: TcpStream) -> io::Result<()> {
    let mut first = true;
    while let Some(message) = read_frame::<AgentToServer>(&mut stream)? {
        let status = message.remote_config_status.as_ref().map(|s| s.status);
        let goodbye = message.agent_disconnect.is_some();
        println!(
            "server: sequence {}, config status {status:?}, goodbye {goodbye}",
            message.sequence_num
        );
        let file = AgentConfigObject {
            body: "log_level: debug\n".into(),
            content_type: "text/yaml".into(),
            role: String::new(),
        };
        let offer = AgentRemoteConfig {
            config: Some(AgentConfigMap {
                config_map: [("agent.yaml".into(), file)].into(),
            }),
            config_hash: vec![1; 32].into(), // any collision-free hash of the config
        };
        let capabilities =
            ServerCapabilities::ACCEPTS_STATUS | ServerCapabilities::OFFERS_REMOTE_CONFIG;
        let reply = ServerToAgent {
            instance_uid: message.instance_uid,
            capabilities: if first { capabilities.bits() } else { 0 },
            remote_config: std::mem::take(&mut first).then_some(offer),
            ..Default::default()
        };
        write_frame(&mut stream, &reply)?;
    }
    Ok(())
}

/// Where the reader thread puts what it receives.
type Inbox = mpsc::Sender<Option<ServerToAgent>>;

/// Connects; a reader thread turns incoming frames into channel messages, `None` once closed.
fn connect(address: SocketAddr, received: Inbox) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(address)?;
    let mut reader = stream.try_clone()?;
    thread::spawn(move || {
        while let Ok(Some(message)) = read_frame(&mut reader) {
            let _ = received.send(Some(message));
        }
        let _ = received.send(None);
    });
    Ok(stream)
}

fn main() -> io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    let server = thread::spawn(move || serve(listener.accept()?.0));

    // Full duplex like WebSocket: heartbeats, and a reply expected for each message.
    let mut config = CoreConfig::new(TransportKind::WebSocket, InstanceUid::new_v7());
    config.heartbeat_interval = Duration::from_secs(1);
    let mut core = ClientCore::new(config, Box::new(ExponentialBackoff::new()));
    let description = AgentDescription::for_service("io.example.core-agent", "0.1.0");
    core.set_agent_description(description);
    core.set_capabilities(
        AgentCapabilities::ACCEPTS_REMOTE_CONFIG
            | AgentCapabilities::REPORTS_REMOTE_CONFIG
            | AgentCapabilities::REPORTS_HEARTBEAT,
    );
    core.start(Instant::now()).map_err(io::Error::other)?;

    let mut stream: Option<TcpStream> = None;
    let (received_tx, received) = mpsc::channel();
    let mut heartbeats_after_config = None;
    while !core.is_stopped() {
        let now = Instant::now();
        if core.wants_connect(now) {
            match connect(address, received_tx.clone()) {
                Ok(connected) => {
                    stream = Some(connected);
                    core.handle_connected(now);
                }
                Err(_) => core.handle_connect_failed(now, None),
            }
        }
        while let Some(message) = core.poll_transmit(now) {
            let sent = stream.as_mut().map(|s| write_frame(s, &message));
            if !matches!(sent, Some(Ok(()))) {
                core.handle_disconnected(now);
                break;
            }
            // A message without status changes is a heartbeat.
            let heartbeat =
                message.remote_config_status.is_none() && message.agent_disconnect.is_none();
            if let (Some(count), true) = (heartbeats_after_config.as_mut(), heartbeat) {
                *count += 1;
                println!("agent: heartbeat {count} sent");
            }
        }
        while let Some(event) = core.poll_event() {
            if let Event::Message(data) = event
                && let Some(offer) = data.remote_config
            {
                let files = offer.config.unwrap_or_default().config_map.len();
                println!("agent: applying {files} config file(s)");
                core.set_remote_config_status(RemoteConfigStatus {
                    last_remote_config_hash: offer.config_hash,
                    status: RemoteConfigStatuses::Applied as i32,
                    error_message: String::new(),
                });
                heartbeats_after_config = Some(0);
            }
        }
        if heartbeats_after_config == Some(2) {
            core.stop(now); // the next message carries agent_disconnect
            heartbeats_after_config = None;
        }
        if core.wants_close() {
            if let Some(stream) = stream.take() {
                // A close handshake: stop writing, then read until the server closes too.
                stream.shutdown(Shutdown::Write)?;
                while let Ok(Some(_)) = received.recv_timeout(Duration::from_secs(5)) {}
            }
            core.handle_disconnected(Instant::now());
            continue;
        }
        // Sleep until the core's next deadline or a message arrives.
        let deadline = core.poll_timeout().unwrap_or(now + Duration::from_secs(60));
        let wait = deadline.saturating_duration_since(now);
        match received.recv_timeout(wait) {
            Ok(Some(message)) => core.handle_message(message, Instant::now()),
            Ok(None) => {
                stream = None;
                core.handle_disconnected(Instant::now());
            }
            Err(_) => core.handle_timeout(Instant::now()),
        }
    }
    println!("agent: stopped");
    server.join().expect("server thread")
}
