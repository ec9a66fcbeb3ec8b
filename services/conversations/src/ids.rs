//! The ids of conversations' resources (see `mosaic_core::ids`).

mosaic_core::define_id! {
    /// A conversation.
    pub struct ConversationId;
}

mosaic_core::define_id! {
    /// A thread of a conversation.
    pub struct ThreadId;
}

mosaic_core::define_id! {
    /// A message.
    pub struct MessageId;
}
