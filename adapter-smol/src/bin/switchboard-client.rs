//! `switchboard-client`: connect to a switchboard, print what arrives, send what you type.
//!
//! ```text
//! switchboard-client --url ws://127.0.0.1:8080/ws --token <token> --conversation demo
//! ```
//!
//! Each line typed is sent as `data.chat.say {"text": <line>}` (another type with `--type`); a
//! line that starts with `{` is sent as the payload itself. Reconnection and resume are the
//! client core's: stop the server and start it again, and the client comes back by itself.

use clap::Parser;
use std::io::BufRead;
use switchboard_core::client::{
    ClientConfig, ClientEvent, ClientInput, OutgoingMessage, TokenSource,
};
use switchboard_core::protocol::{MessageType, Payload};
use switchboard_smol::client::NativeClient;

#[derive(Parser, Debug)]
#[command(name = "switchboard-client", version, about = "Talk to a switchboard from a terminal.")]
struct Args {
    /// The endpoint.
    #[arg(long, env = "SWITCHBOARD_URL", default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// An access token (the one `switchboard --dev` prints).
    #[arg(long, env = "SWITCHBOARD_TOKEN", hide_env_values = true)]
    token: String,
    /// The conversation to join.
    #[arg(long)]
    conversation: Option<String>,
    /// The type of the messages typed.
    #[arg(long = "type", default_value = "data.chat.say")]
    message_type: String,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let Ok(message_type) = MessageType::new(&args.message_type) else {
        eprintln!("switchboard-client: {:?} is not a message type", args.message_type);
        return std::process::ExitCode::from(2);
    };
    let mut config = ClientConfig::new(args.url);
    config.token = TokenSource::Static(args.token);
    config.conversation_id = args.conversation;
    let client = NativeClient::start(config);

    let sender = client.clone();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            let text = line.trim();
            if text.is_empty() {
                continue;
            }
            let payload = if text.starts_with('{') {
                Payload::from_json(text)
            } else {
                Payload::from_serialize(&serde_json::json!({ "text": text }))
            };
            match payload {
                Ok(payload) => sender.input(ClientInput::Send(OutgoingMessage {
                    message_type: message_type.clone(),
                    payload,
                    conversation_id: None,
                    correlation_id: None,
                })),
                Err(error) => eprintln!("not sent: {error}"),
            }
        }
    });

    smol::block_on(async {
        while let Ok((_, event)) = client.events().recv().await {
            match event {
                ClientEvent::Message { message, .. } => {
                    let Ok(envelope) = message.envelope() else { continue };
                    println!(
                        "{} #{} {}",
                        envelope.message_type,
                        envelope.sequence.unwrap_or(0),
                        envelope.payload.as_str()
                    )
                }
                ClientEvent::StateChange(change) => {
                    let retry = change
                        .next_retry_at
                        .map(|_| format!(" (attempt {})", change.attempt))
                        .unwrap_or_default();
                    eprintln!(
                        "[{} → {}: {}{retry}]",
                        change.previous_state.as_str(),
                        change.new_state.as_str(),
                        change.reason
                    );
                }
                ClientEvent::Connected { connection_id, resumed, replayed } => {
                    eprintln!(
                        "[connected as {connection_id}{}]",
                        if resumed {
                            format!(", resumed, {replayed} replayed")
                        } else {
                            String::new()
                        }
                    )
                }
                ClientEvent::ServerError(error) => {
                    eprintln!("[error {}: {}]", error.code, error.message)
                }
                ClientEvent::Gap { reason, channel: Some(channel) } => {
                    eprintln!("[messages on {channel} may be missing: {reason}]")
                }
                ClientEvent::Gap { reason, channel: None } => {
                    eprintln!("[messages may be missing: {reason}]")
                }
                ClientEvent::SendFailed { error, .. } => eprintln!("[not sent: {error}]"),
                ClientEvent::LocalError(error) => eprintln!("[{error}]"),
                ClientEvent::Disconnected { .. } => {}
            }
        }
    });
    std::process::ExitCode::SUCCESS
}
