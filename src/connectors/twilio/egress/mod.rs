//! Twilio's egress wing: the sink the egress engine delivers through ([`sink`]), how long text
//! is cut and counted in SMS segments ([`split`]), and the auto-join that makes the bot a
//! participant of the conversations it must answer in ([`auto_join`]).

pub mod auto_join;
pub mod sink;
pub mod split;
