"""posttrain.serve: the annotation and feedback web app (FastAPI + SQLite). See docs/serve.md.

    db.py              schema, WAL connections and their pool, write lock, background checkpoints, tokens
    items.py           pairwise items from JSONL (prompt + response_a/b or chosen/rejected)
    assign.py          who labels what: k labels per item, leases, idempotent submissions
    feedback.py        chat variants (sticky hash split), model backends, thumbs/rating log
    export.py          preference pairs, Annotation rows, the `posttrain ab` feedback log
    validate.py        request bodies and fields: size, depth, finite numbers, SQLite ranges, UTF-8
    markup.py          Markdown in prompts and responses: markdown-it-py, then the nh3 sanitiser
    web.py             what routes share: settings, auth, forms, rendering
    app.py             create_app(Settings(db=...)) and the login/admin/static routes
    annotate_routes.py, chat_routes.py, admin_routes.py   the pages and JSON API
    commands.py        `posttrain serve`, `serve token`, `serve import`, `serve export`
    testing.py         LiveServer: the real command in a child process, for end-to-end tests
"""
