"""The `silo` command line.

    main           the typer app and the table of every command; `main()` is the script
    console        the two consoles and the wrapper that prints library errors as a line
    corpus_cmd     silo corpus build | stats | split | olc
    model_cmd      silo tokenizer train, silo train, silo eval, silo generate
    datastore_cmd  silo datastore build | add | remove | compact | reindex | info
    inference_cmd  silo tune, silo complete
    serve_cmd      silo serve, and the default datastore it builds on first start
    log_cmd        silo log keygen, silo verify (the data owner's client)
"""
