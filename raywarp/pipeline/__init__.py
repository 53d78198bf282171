"""The distributed job: source → plan → decode → flow/densify → sample → stitch → encode → manifest.

Ray lives here and only here; the math it runs is in `raywarp.flow`, `raywarp.densify`,
`raywarp.sampler`.
"""
