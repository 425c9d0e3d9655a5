//! oauth3 sandbox runner: policy enforcement, JavaScript sandbox, sealed secrets.
