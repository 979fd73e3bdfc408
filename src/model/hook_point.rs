//! The model's hook points and their TransformerLens names, in one place: the forward pass
//! applies its hooks under these names, analyses build the names they cache with the same
//! constructors, and [`HookPoint::all`] lists the valid names of a model so that a misspelled
//! hook is an error rather than a hook that silently never fires.

/// One activation of the forward pass that [`crate::model::Hooks`] can cache or replace.
/// Block hook points carry their layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HookPoint {
    /// `hook_embed`: token embeddings `[batch, pos, d_model]`.
    Embed,
    /// `hook_pos_embed`: positional embeddings `[1, pos, d_model]`.
    PosEmbed,
    /// `blocks.L.hook_resid_pre`.
    ResidPre(usize),
    /// `blocks.L.attn.hook_q`, `[batch, pos, head, d_head]`; likewise `hook_k`, `hook_v`.
    Q(usize),
    K(usize),
    V(usize),
    /// `blocks.L.attn.hook_attn_scores`: scaled, masked scores `[batch, head, query, key]`.
    AttnScores(usize),
    /// `blocks.L.attn.hook_pattern`: softmax of the scores `[batch, head, query, key]`.
    Pattern(usize),
    /// `blocks.L.attn.hook_z`: pattern-weighted values `[batch, pos, head, d_head]`.
    Z(usize),
    /// `blocks.L.hook_attn_out`.
    AttnOut(usize),
    /// `blocks.L.hook_resid_mid`.
    ResidMid(usize),
    /// `blocks.L.mlp.hook_pre`: MLP pre-activations `[batch, pos, d_mlp]`.
    MlpPre(usize),
    /// `blocks.L.mlp.hook_post`: after the ReLU.
    MlpPost(usize),
    /// `blocks.L.hook_mlp_out`.
    MlpOut(usize),
    /// `blocks.L.hook_resid_post`.
    ResidPost(usize),
}

impl HookPoint {
    /// The TransformerLens name, e.g. `blocks.0.attn.hook_pattern`.
    pub fn name(self) -> String {
        use HookPoint::*;
        let block = |l: usize, hook: &str| format!("blocks.{l}.{hook}");
        match self {
            Embed => "hook_embed".to_string(),
            PosEmbed => "hook_pos_embed".to_string(),
            ResidPre(l) => block(l, "hook_resid_pre"),
            Q(l) => block(l, "attn.hook_q"),
            K(l) => block(l, "attn.hook_k"),
            V(l) => block(l, "attn.hook_v"),
            AttnScores(l) => block(l, "attn.hook_attn_scores"),
            Pattern(l) => block(l, "attn.hook_pattern"),
            Z(l) => block(l, "attn.hook_z"),
            AttnOut(l) => block(l, "hook_attn_out"),
            ResidMid(l) => block(l, "hook_resid_mid"),
            MlpPre(l) => block(l, "mlp.hook_pre"),
            MlpPost(l) => block(l, "mlp.hook_post"),
            MlpOut(l) => block(l, "hook_mlp_out"),
            ResidPost(l) => block(l, "hook_resid_post"),
        }
    }

    /// Every hook point of a model with `n_layers` blocks, in the order of the forward pass.
    pub fn all(n_layers: usize) -> Vec<HookPoint> {
        use HookPoint::*;
        let mut all = vec![Embed, PosEmbed];
        for l in 0..n_layers {
            all.extend([
                ResidPre(l),
                Q(l),
                K(l),
                V(l),
                AttnScores(l),
                Pattern(l),
                Z(l),
                AttnOut(l),
                ResidMid(l),
                MlpPre(l),
                MlpPost(l),
                MlpOut(l),
                ResidPost(l),
            ]);
        }
        all
    }
}

impl From<HookPoint> for String {
    fn from(hook: HookPoint) -> String {
        hook.name()
    }
}
