//! The ids of agents' resources: one newtype each (see `mosaic_core::ids`).

mosaic_core::define_id! {
    /// An agent config.
    pub struct AgentId;
}

mosaic_core::define_id! {
    /// A knowledge-base document.
    pub struct DocumentId;
}

mosaic_core::define_id! {
    /// One claim of `ClaimDocuments`: the documents it handed out.
    pub struct ClaimId;
}

mosaic_core::define_id! {
    /// A workflow.
    pub struct WorkflowId;
}

mosaic_core::define_id! {
    /// A recorded execution of a workflow.
    pub struct ExecutionId;
}

mosaic_core::define_id! {
    /// An action an agent drafted, waiting for approval (the approvals queue).
    pub struct ActionId;
}
