//! Single sign-on with OpenID Connect (docs/sso.md): provider discovery, ID
//! token verification, the authorization code flow with PKCE for the web
//! and the device flow kiln runs itself for `kiln login`.

pub mod discovery;
pub mod flow;
pub(crate) mod routes;
pub mod verify;

pub use flow::Sso;
