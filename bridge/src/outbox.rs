//! Where what the store produced goes: each [`Effect`] as an MQTT publish.

use messenger_protocol::topics;
use messenger_protocol::{DeviceId, UserId};
use messenger_store::Effect;
use rumqttc::QoS;

/// One publish to make once the transaction that produced it is durable.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub(crate) topic: String,
    pub(crate) qos: QoS,
    pub(crate) retain: bool,
    pub(crate) payload: Vec<u8>,
}

impl Outgoing {
    /// The publish carrying `effect`; a reply goes to the device that made the
    /// request (`from`), and is dropped if there is none.
    pub(crate) fn of(effect: Effect, from: Option<(&UserId, &DeviceId)>) -> Option<Self> {
        let (topic, qos, retain, payload) = match effect {
            Effect::Reply(payload) => {
                let (user, device) = from?;
                (topics::dev(user, device), QoS::AtLeastOnce, false, payload)
            }
            Effect::Event { user, payload } => {
                (topics::inbox(&user), QoS::AtLeastOnce, false, payload)
            }
            // Typing: losing one is harmless, and nothing stores it for later.
            Effect::Transient { user, payload } => {
                (topics::inbox(&user), QoS::AtMostOnce, false, payload)
            }
            // An empty retained publish deletes the retained presence.
            Effect::Forget { user, device } => (
                topics::presence(&user, &device),
                QoS::AtLeastOnce,
                true,
                Vec::new(),
            ),
            // Retained: a client that subscribes later gets the current status.
            Effect::Status { user, payload } => {
                (topics::status(&user), QoS::AtLeastOnce, true, payload)
            }
        };
        Some(Self {
            topic,
            qos,
            retain,
            payload,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effects_map_to_the_protocols_topics() {
        let alice = UserId::parse("alice").unwrap();
        let phone = DeviceId::parse("phone").unwrap();
        let reply = Outgoing::of(Effect::Reply(b"{}".to_vec()), Some((&alice, &phone))).unwrap();
        assert_eq!(
            (reply.topic.as_str(), reply.qos, reply.retain),
            ("chat/alice/dev/phone", QoS::AtLeastOnce, false)
        );
        assert!(Outgoing::of(Effect::Reply(Vec::new()), None).is_none());
        let typing = Outgoing::of(
            Effect::Transient {
                user: alice.clone(),
                payload: Vec::new(),
            },
            None,
        )
        .unwrap();
        assert_eq!(
            (typing.topic.as_str(), typing.qos),
            ("chat/alice/inbox", QoS::AtMostOnce)
        );
        let status = Outgoing::of(
            Effect::Status {
                user: alice,
                payload: Vec::new(),
            },
            None,
        )
        .unwrap();
        assert_eq!(
            (status.topic.as_str(), status.retain),
            ("status/alice", true)
        );
    }
}
