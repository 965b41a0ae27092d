//! `shoal-protocol`: the runner messages decoded with prost and converted to domain types (what
//! the runner transport does with every message a peer sends), and the text and JSON forms of
//! identifiers that storage and peers hand back (shard ids, runner addresses, runner JSON).

use std::fmt::Debug;
use std::str::FromStr;

use prost::Message;
use shoal_protocol::proto::runner::v1 as pb;
use shoal_protocol::{
    AckChunk, EntityAddress, EntityId, EntityType, Failure, Interrupt, Notification, Reply,
    Request, Runner, RunnerAddress, ShardGroup, ShardId, Snowflake, Tag,
};

/// Decodes `bytes` as the wire type `W`, converts it to the domain type `D`, and, when that
/// succeeds, checks that the domain value survives the way back: to the wire type, to bytes, and
/// in again.
fn wire_round_trip<W, D>(bytes: &[u8])
where
    W: Message + Default + Debug,
    D: TryFrom<W> + PartialEq + Debug,
    for<'a> W: From<&'a D>,
{
    let Ok(wire) = W::decode(bytes) else {
        return;
    };
    let Ok(domain) = D::try_from(wire) else {
        return;
    };
    let encoded = W::from(&domain).encode_to_vec();
    let wire = W::decode(&encoded[..]).unwrap_or_else(|e| panic!("our own encoding fails: {e}"));
    let back = D::try_from(wire).unwrap_or_else(|_| panic!("our own encoding is invalid"));
    assert_eq!(back, domain, "the message changed on a round trip");
}

/// The text form of a value reads back to the same value.
fn text_round_trip<T>(text: &str)
where
    T: FromStr + ToString + PartialEq + Debug,
    T::Err: Debug,
{
    let Ok(value) = text.parse::<T>() else {
        return;
    };
    let printed = value.to_string();
    let back = printed
        .parse::<T>()
        .unwrap_or_else(|e| panic!("{printed:?} (printed from {text:?}) does not parse: {e:?}"));
    assert_eq!(back, value, "{text:?} changed on a text round trip");
}

/// The JSON form of a value reads back to the same value.
fn json_round_trip<T>(text: &str)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + Debug,
{
    let Ok(value) = serde_json::from_str::<T>(text) else {
        return;
    };
    let json = serde_json::to_string(&value).unwrap_or_else(|e| panic!("cannot serialize: {e}"));
    let back: T =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{json} does not read back: {e}"));
    assert_eq!(back, value, "{text:?} changed on a JSON round trip");
}

/// A name is accepted exactly as given.
fn name<T>(text: &str)
where
    T: FromStr + AsRef<str>,
{
    if let Ok(name) = text.parse::<T>() {
        assert_eq!(name.as_ref(), text, "a name was altered");
        assert!(!text.is_empty() && !text.chars().any(char::is_control));
    }
}

/// The first byte picks the message or form; the rest is its encoding.
pub fn check(data: &[u8]) {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    let text = std::str::from_utf8(bytes).ok();
    match which % 16 {
        0 => wire_round_trip::<pb::Request, Request>(bytes),
        1 => wire_round_trip::<pb::Reply, Reply>(bytes),
        2 => wire_round_trip::<pb::Notification, Notification>(bytes),
        3 => wire_round_trip::<pb::Failure, Failure>(bytes),
        4 => wire_round_trip::<pb::Interrupt, Interrupt>(bytes),
        5 => wire_round_trip::<pb::AckChunk, AckChunk>(bytes),
        6 => wire_round_trip::<pb::EntityAddress, EntityAddress>(bytes),
        7 => wire_round_trip::<pb::ShardId, ShardId>(bytes),
        8 => {
            // Batches as prost reads them (the client's reply path).
            if let Ok(batch) = pb::ServerBatch::decode(bytes) {
                for reply in batch.replies {
                    let encoded = reply.encode_to_vec();
                    wire_round_trip::<pb::Reply, Reply>(&encoded);
                }
            }
        }
        9 => {
            if let Some(text) = text {
                text_round_trip::<ShardId>(text);
                json_round_trip::<ShardId>(text);
            }
        }
        10 => {
            if let Some(text) = text {
                text_round_trip::<RunnerAddress>(text);
                if let Ok(address) = text.parse::<RunnerAddress>() {
                    // Stored as given: the text form is the canonical one.
                    assert_eq!(address.as_str(), text);
                    let _ = address.endpoint();
                }
            }
        }
        11 => {
            if let Some(text) = text
                && let Ok(runner) = Runner::from_json(text)
            {
                let json = runner.to_json();
                assert_eq!(Runner::from_json(&json).ok().as_ref(), Some(&runner));
                let mut sorted = runner.groups.clone();
                sorted.sort();
                sorted.dedup();
                assert_eq!(sorted, runner.groups, "groups are not sorted and unique");
            }
        }
        12 => {
            if let Some(text) = text {
                json_round_trip::<EntityAddress>(text);
            }
        }
        13 => {
            if let Some(text) = text {
                text_round_trip::<Snowflake>(text);
                json_round_trip::<Snowflake>(text);
            }
        }
        _ => {
            if let Some(text) = text {
                name::<EntityId>(text);
                name::<EntityType>(text);
                name::<ShardGroup>(text);
                name::<Tag>(text);
            }
        }
    }
}
