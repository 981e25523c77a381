//! Who may do what: one pure function over (role, session, member, action), the server's only
//! source of truth for permissions (shared/CONTEXT.md, "Roles"). Table-tested below for every
//! role × action.

use crate::protocol::{MediaKind, Role, Source};

/// Something a member asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Publish(Source),
    /// Send caption text to everyone.
    Caption,
    RaiseHand,
    SetHeadcount,
    Chat,
    /// See pseudonymous subject ids and the lobby (the leader's roster).
    SeeIdentities,
    /// See the hand-raise queue.
    SeeHandQueue,
    Admit,
    GrantFloor,
    MuteMember,
    RemoveMember,
    Lock,
    EndSession,
    /// Turn automatic captions (the captioner) on or off.
    SetAutoCaptions,
}

impl Action {
    /// Every action, for exhaustive tests and docs.
    pub const ALL: [Action; 16] = [
        Action::Publish(Source::Camera),
        Action::Publish(Source::Microphone),
        Action::Publish(Source::Screen),
        Action::Caption,
        Action::RaiseHand,
        Action::SetHeadcount,
        Action::Chat,
        Action::SeeIdentities,
        Action::SeeHandQueue,
        Action::Admit,
        Action::GrantFloor,
        Action::MuteMember,
        Action::RemoveMember,
        Action::Lock,
        Action::EndSession,
        Action::SetAutoCaptions,
    ];
}

/// The session facts permissions depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionFacts {
    pub chat_enabled: bool,
    pub ended: bool,
}

/// The member facts permissions depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemberFacts {
    /// Admitted from the lobby (or never needed to wait).
    pub admitted: bool,
    /// Currently given the floor by the leader.
    pub has_floor: bool,
}

/// Whether `role` may do `action` now.
pub fn allowed(role: Role, session: SessionFacts, member: MemberFacts, action: Action) -> bool {
    use Action::*;
    use Role::*;
    if session.ended || !member.admitted {
        return false;
    }
    match (role, action) {
        (Leader, _) => action != RaiseHand && action != SetHeadcount,
        (Representative, Publish(_) | SeeHandQueue) => true,
        (Representative, Chat) => session.chat_enabled,
        (Participant, Publish(Source::Camera | Source::Microphone)) => member.has_floor,
        (Participant, RaiseHand) => true,
        (Participant, Chat) => session.chat_enabled,
        (Site, Publish(Source::Camera | Source::Microphone)) => member.has_floor,
        (Site, RaiseHand | SetHeadcount) => true,
        (Site, Chat) => session.chat_enabled,
        (Interpreter, Publish(Source::Camera) | Caption) => true,
        (Interpreter, Chat) => session.chat_enabled,
        // Hall equipment: the encoder sends the lecture feed like the leader's camera and
        // microphone; the captioner posts captions (the room also needs them turned on); a
        // player only receives. None of them chats or raises a hand.
        (Encoder, Publish(Source::Camera | Source::Microphone)) => true,
        (Captioner, Caption) => true,
        _ => false,
    }
}

/// Whether a member with `role` is sent a published track of `kind` (through the normal
/// protocol). Hall equipment gets nothing, except the captioner: the speech it captions (every
/// audio track the room forwards: the teachers' and the floor-holder's), and only while the
/// leader has automatic captions on. A WHEP player asks for the main feed itself.
pub fn receives(role: Role, auto_captions: bool, kind: MediaKind) -> bool {
    match role {
        Role::Encoder | Role::Player => false,
        Role::Captioner => auto_captions && kind == MediaKind::Audio,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::*;

    const OPEN: SessionFacts = SessionFacts {
        chat_enabled: false,
        ended: false,
    };
    const CHAT: SessionFacts = SessionFacts {
        chat_enabled: true,
        ended: false,
    };
    const IN: MemberFacts = MemberFacts {
        admitted: true,
        has_floor: false,
    };
    const FLOOR: MemberFacts = MemberFacts {
        admitted: true,
        has_floor: true,
    };

    /// The expected table, one row per role: the actions allowed (without floor, chat off).
    fn expected(role: Role) -> Vec<Action> {
        match role {
            Role::Leader => Action::ALL
                .iter()
                .copied()
                .filter(|a| *a != RaiseHand && *a != SetHeadcount)
                .collect(),
            Role::Representative => vec![
                Publish(Source::Camera),
                Publish(Source::Microphone),
                Publish(Source::Screen),
                SeeHandQueue,
            ],
            Role::Participant => vec![RaiseHand],
            Role::Site => vec![RaiseHand, SetHeadcount],
            Role::Interpreter => vec![Publish(Source::Camera), Caption],
            Role::Encoder => vec![Publish(Source::Camera), Publish(Source::Microphone)],
            Role::Player => vec![],
            Role::Captioner => vec![Caption],
        }
    }

    const ROLES: [Role; 8] = Role::ALL;

    #[test]
    fn every_role_times_every_action() {
        for role in ROLES {
            let want = expected(role);
            for action in Action::ALL {
                assert_eq!(
                    allowed(role, OPEN, IN, action),
                    want.contains(&action),
                    "{role:?} {action:?}"
                );
            }
        }
    }

    #[test]
    fn floor_opens_camera_and_mic_for_participants_and_sites_only() {
        for role in ROLES {
            for action in Action::ALL {
                let without = allowed(role, OPEN, IN, action);
                let with = allowed(role, OPEN, FLOOR, action);
                let gains = matches!(role, Role::Participant | Role::Site)
                    && matches!(
                        action,
                        Publish(Source::Camera) | Publish(Source::Microphone)
                    );
                assert_eq!(with, without || gains, "{role:?} {action:?}");
            }
        }
        assert!(!allowed(
            Role::Participant,
            OPEN,
            FLOOR,
            Publish(Source::Screen)
        ));
    }

    #[test]
    fn chat_only_when_enabled_and_for_everyone_then() {
        for role in ROLES {
            assert_eq!(
                allowed(role, OPEN, IN, Chat),
                role == Role::Leader,
                "{role:?}"
            );
            assert_eq!(
                allowed(role, CHAT, IN, Chat),
                !role.is_equipment(),
                "{role:?}"
            );
        }
    }

    #[test]
    fn who_receives_what() {
        use MediaKind::*;
        for role in ROLES {
            for auto in [false, true] {
                for kind in [Audio, Video] {
                    let want = match role {
                        Role::Encoder | Role::Player => false,
                        Role::Captioner => auto && kind == Audio,
                        _ => true,
                    };
                    assert_eq!(receives(role, auto, kind), want, "{role:?} {auto} {kind:?}");
                }
            }
        }
    }

    #[test]
    fn nothing_in_the_lobby_or_after_the_end() {
        let lobby = MemberFacts {
            admitted: false,
            has_floor: true,
        };
        let ended = SessionFacts {
            chat_enabled: true,
            ended: true,
        };
        for role in ROLES {
            for action in Action::ALL {
                assert!(!allowed(role, CHAT, lobby, action), "{role:?} {action:?}");
                assert!(!allowed(role, ended, FLOOR, action), "{role:?} {action:?}");
            }
        }
    }
}
