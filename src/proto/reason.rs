//! Reason codes carried by `Error`, `Decision`, `OpenFailed` and `SessionEnd`.

macro_rules! reasons {
    ($($name:ident = $code:literal, $label:literal, $text:literal;)*) => {
        /// Why something was refused or ended. Stable codes on the wire, stable labels in metrics.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Reason { $($name),* }

        impl Reason {
            pub fn code(self) -> u16 { match self { $(Reason::$name => $code),* } }
            pub fn from_code(code: u16) -> Reason {
                match code { $($code => Reason::$name,)* _ => Reason::Unknown }
            }
            /// Label used in metrics and audit records.
            pub fn label(self) -> &'static str { match self { $(Reason::$name => $label),* } }
            /// Sentence shown to a person.
            pub fn text(self) -> &'static str { match self { $(Reason::$name => $text),* } }
        }
    };
}

reasons! {
    Unknown = 0, "unknown", "unknown reason";
    VersionMismatch = 1, "version_mismatch", "protocol version not supported";
    BadFrame = 2, "bad_frame", "malformed or unexpected frame";
    FrameTooLarge = 3, "frame_too_large", "frame exceeds the size limit";
    AlpnRequired = 4, "alpn_required", "the connection did not negotiate the tether protocol (ALPN)";
    DeviceMismatch = 5, "device_mismatch", "device id does not match the certificate";
    DeviceRetired = 6, "device_retired", "the hub retired this device";
    NotAttached = 10, "not_attached", "the device is not attached to this relay";
    GrantBadSignature = 11, "grant_bad_signature", "the grant's signature is not valid";
    GrantExpired = 12, "grant_expired", "the grant has expired";
    GrantWrongDevice = 13, "grant_wrong_device", "the grant is for another device";
    GrantServiceNotGranted = 14, "grant_service_not_granted", "the grant does not name this service";
    GrantReused = 15, "grant_reused", "the grant's session id was already used";
    GrantMalformed = 16, "grant_malformed", "the grant cannot be decoded";
    GrantNoClientKey = 17, "grant_no_client_key", "the grant names no client key for end-to-end encryption";
    GrantWrongRelay = 18, "grant_wrong_relay", "the grant names neither this relay nor its twin";
    ServiceNotAllowed = 20, "service_not_allowed", "the service is not in the device's allow-list";
    TargetNotAllowed = 21, "target_not_allowed", "the service target is outside loopback and the allow-list";
    ServiceUnreachable = 22, "service_unreachable", "the device's local service did not accept the connection";
    ConsentDenied = 30, "consent_denied", "the on-site operator denied the session";
    ConsentTimedOut = 31, "consent_timed_out", "nobody on site approved the session in time";
    UnknownSession = 40, "unknown_session", "unknown or ended session";
    AlreadyPaired = 41, "already_paired", "this connection of the session is already paired";
    BadToken = 42, "bad_token", "the session token is wrong";
    PairingTimedOut = 43, "pairing_timed_out", "the device did not open its data leg in time";
    EndToEndFailed = 44, "e2e_failed", "end-to-end TLS between client and device failed";
    ResumeRefused = 45, "resume_refused", "a replacement leg failed to resume the connection";
    NeverOpened = 46, "never_opened", "the device never opened that connection, and now never will";
    ClientClosed = 50, "client_closed", "the specialist closed the session";
    AgentGone = 51, "agent_gone", "the device's agent disconnected";
    AgentSilent = 58, "agent_silent", "the device did not answer";
    EndedOnSite = 52, "ended_on_site", "the on-site operator ended the session";
    RelayShutdown = 53, "relay_shutdown", "the relay is shutting down";
    RelayGone = 55, "relay_gone", "the relay's control channel to the device was lost";
    Revoked = 56, "revoked", "the hub revoked the session (an administrator ended it, or retired the device)";
    CertRevoked = 57, "cert_revoked", "a certificate of this session's path was revoked";
    SessionExpired = 54, "session_expired", "the session reached its maximum duration";
    Overloaded = 60, "overloaded", "the relay is at its connection limit";
    Internal = 61, "internal", "internal error";
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.text(), self.label())
    }
}
