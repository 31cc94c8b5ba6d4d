"""`clue serve`, `clue embed` and `clue serving-config`.

* ``clue serve --model-base-path DIR --model-name NAME [--port 8500]
  [--ssl-config-file FILE | --tls-cert PEM --tls-key PEM [--tls-client-ca PEM]]``:
  the local TF Serving-compatible gRPC server (``clue_keras.serving.server``).
  Several models from one server: repeat ``--model-base-path``/``--model-name``
  (one pair per model), or give TF Serving's ``--model-config-file models.config``.
* ``clue embed --server HOST:PORT --model NAME --input users.jsonl --out
  embeddings.parquet [--tls-ca PEM [--tls-cert PEM --tls-key PEM]]``: user
  embeddings from any TF Serving-compatible server into Parquet (``user_id``,
  ``embedding`` list<float>); the model describes its own input layout
  (``--vocab``/``--services`` only for older exports); bad input lines and
  users the model rejects go to ``<out stem>.errors.jsonl`` with their line
  numbers (``--strict``: stop at the first bad line).
* ``clue serving-config --model-name NAME --base-path /models/NAME [--model-name
  NAME2 --base-path /models/NAME2 ...] --out models.config``: a TF Serving
  ``models.config`` for the tensorflow/serving image (or ``clue serve``), e.g. the
  encoder ``clue`` and the user-id lookup model ``clue_user_lookup``.

Exit codes: 0 success; 1 ``embed`` finished but some lines or users failed;
2 bad arguments or input (with ``--strict``, a bad input line).
"""

from __future__ import annotations

import logging
import sys


def add_parser(subparsers) -> None:
    from clue_keras.serving.server import (
        DEFAULT_MAX_BATCH,
        DEFAULT_MAX_CONCURRENT_RPCS,
        DEFAULT_MAX_REQUEST_BYTES,
        DEFAULT_POLL_SECONDS,
        DEFAULT_STALLED_SECONDS,
        DEFAULT_THREADS,
    )

    p = subparsers.add_parser(
        "serve",
        help="serve a SavedModel directory over TF Serving's gRPC API (local development)",
        description="Serve <model-base-path>/<version>/saved_model.pb over TensorFlow Serving's "
        "gRPC PredictionService and ModelService. Serves the highest version and picks up new "
        "ones without a restart. Stops on SIGTERM / SIGINT.",
    )
    p.add_argument("--model-base-path", action="append", default=[],
                   help="directory of <integer version>/ SavedModels (repeat, one per --model-name, "
                        "to serve several models)")
    p.add_argument("--model-name", action="append", default=[], help="the model name clients ask for")
    p.add_argument("--model-config-file",
                   help="TF Serving's models.config (`clue serving-config`): serve every model it "
                        "names (name and base_path; other fields are ignored)")
    p.add_argument("--port", type=int, default=8500, help="gRPC port (default 8500; 0 = any free port)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1 = this machine only)")
    p.add_argument("--poll-seconds", type=float, default=DEFAULT_POLL_SECONDS, help="how often to look for new versions")
    p.add_argument("--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES,
                   help="largest request accepted, bytes (default 4 MiB, gRPC's default)")
    p.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH,
                   help="largest batch (dimension 0) per request; 0 = no limit")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="gRPC worker threads")
    p.add_argument("--max-concurrent-rpcs", type=int, default=DEFAULT_MAX_CONCURRENT_RPCS,
                   help="RPCs running or queued at once; more get RESOURCE_EXHAUSTED")
    p.add_argument("--stalled-seconds", type=float, default=DEFAULT_STALLED_SECONDS,
                   help="report (once) and skip an incomplete version directory unchanged this long")
    tls = p.add_argument_group("TLS (default: plaintext)")
    tls.add_argument("--ssl-config-file",
                     help="TF Serving's SSLConfig text proto (server_key, server_cert, custom_ca, client_verify)")
    tls.add_argument("--tls-cert", help="server certificate chain, PEM file")
    tls.add_argument("--tls-key", help="server private key, PEM file")
    tls.add_argument("--tls-client-ca", help="require client certificates signed by this CA (mutual TLS)")
    p.set_defaults(func=_run_serve)

    p = subparsers.add_parser(
        "embed",
        help="embed users from a JSONL file with a served model, into Parquet",
        description="Read users ({\"user_id\": ..., \"items\": {service: [texts, oldest first]}} per line), "
        "embed them through a TF Serving-compatible server, write user_id + embedding to Parquet. "
        "The layout (services in order, items per service) comes from the model's clue_metadata "
        "signature; models exported before it need --vocab or --services. Bad input lines and "
        "users the model rejects are listed, with their line numbers, in <out stem>.errors.jsonl "
        "and the rest goes on (--strict: stop at the first bad line).",
    )
    p.add_argument("--server", required=True, help="HOST:PORT of the gRPC server")
    p.add_argument("--model", required=True, help="model name")
    p.add_argument("--input", required=True, help="users JSONL file")
    p.add_argument("--out", required=True, help="output Parquet file")
    p.add_argument("--services", help="comma-separated services in model order (default: from the model; "
                   "needed, or --vocab, only for models exported without clue_metadata)")
    p.add_argument("--vocab", help="clue_vocab.json, or the vocab directory holding it (services, max_items); "
                   "only for models exported without clue_metadata")
    p.add_argument("--max-items", type=int, help="S, items per service (default: from the model)")
    p.add_argument("--signature", default="serving_default")
    p.add_argument("--input-name", default="item_texts", help="signature input [B, P, S] string")
    p.add_argument("--output", default="embedding", help="signature output [B, E] float")
    p.add_argument("--strict", action="store_true",
                   help="stop at the first bad input line (default: report it in the errors file and go on)")
    p.add_argument("--batch-size", type=int, default=64, help="users per request (split further if too big)")
    p.add_argument("--timeout", type=float, default=10.0, help="deadline per request, seconds")
    p.add_argument("--max-message-bytes", type=int, default=4 << 20, help="largest request sent, bytes")
    p.add_argument("--tls-ca", help="connect with TLS, trusting this CA (PEM file)")
    p.add_argument("--tls-cert", help="client certificate chain (PEM file) for mutual TLS")
    p.add_argument("--tls-key", help="client private key (PEM file) for mutual TLS")
    p.add_argument("--tls-server-name", help="name to check the server certificate against")
    p.set_defaults(func=_run_embed)

    p = subparsers.add_parser(
        "serving-config",
        help="write a TF Serving models.config for the tensorflow/serving image",
        description="Write a ModelServerConfig text proto. Repeat --model-name/--base-path for several models.",
    )
    p.add_argument("--model-name", action="append", required=True)
    p.add_argument("--base-path", action="append", required=True,
                   help="absolute path as the server sees it, e.g. /models/NAME")
    p.add_argument("--num-versions", type=int, default=1, help="newest versions to keep loaded per model")
    p.add_argument("--out", help="output file (default: stdout)")
    p.set_defaults(func=_run_serving_config)


# -- serve --------------------------------------------------------------------


def _run_serve(args) -> int:
    from clue_keras.serving import server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        ssl_config = None
        if args.ssl_config_file and (args.tls_cert or args.tls_key or args.tls_client_ca):
            raise ValueError("give --ssl-config-file or --tls-cert/--tls-key, not both")
        if args.ssl_config_file:
            ssl_config = server.load_ssl_config(args.ssl_config_file)
        elif args.tls_cert or args.tls_key or args.tls_client_ca:
            if not (args.tls_cert and args.tls_key):
                raise ValueError("--tls-cert and --tls-key go together")
            ssl_config = server.ssl_config_from_files(args.tls_cert, args.tls_key, args.tls_client_ca)
        models = _served_models(args)
        handle = server.serve(
            None, None, models=models, port=args.port, host=args.host,
            poll_seconds=args.poll_seconds, max_request_bytes=args.max_request_bytes,
            max_batch=args.max_batch, threads=args.threads, ssl_config=ssl_config,
            max_concurrent_rpcs=args.max_concurrent_rpcs, stalled_seconds=args.stalled_seconds,
        )
    except (FileNotFoundError, ValueError, OSError) as e:
        print(f"clue serve: {e}", file=sys.stderr)
        return 2
    for name, base in models:
        print(f"serving model {name!r} from {base} on {handle.address}", flush=True)
    server.run_until_signalled(handle)
    return 0


def _served_models(args):
    """(name, base path) pairs from ``--model-config-file`` or the repeated
    ``--model-name``/``--model-base-path`` pairs (ValueError when they do not pair up)."""
    from clue_keras.serving.models_config import read_models_config

    if args.model_config_file:
        if args.model_name or args.model_base_path:
            raise ValueError("give --model-config-file or --model-name/--model-base-path, not both")
        return read_models_config(args.model_config_file)
    if not args.model_name or len(args.model_name) != len(args.model_base_path):
        raise ValueError("give one --model-base-path per --model-name (or --model-config-file)")
    return list(zip(args.model_name, args.model_base_path))


# -- serving-config -----------------------------------------------------------


def _run_serving_config(args) -> int:
    from clue_keras.serving import models_config

    if len(args.model_name) != len(args.base_path):
        print("clue serving-config: give one --base-path per --model-name", file=sys.stderr)
        return 2
    models = list(zip(args.model_name, args.base_path))
    try:
        if args.out:
            models_config.write_models_config(args.out, models, args.num_versions)
            print(f"wrote {args.out}")
        else:
            sys.stdout.write(models_config.models_config_text(models, args.num_versions))
    except ValueError as e:
        print(f"clue serving-config: {e}", file=sys.stderr)
        return 2
    return 0


# -- embed --------------------------------------------------------------------


def _run_embed(args) -> int:
    from clue_keras.serving.client import CLUEClient, ServingError
    from clue_keras.serving.embed_file import embed_jsonl, layout_from_vocab

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    services, max_items = None, args.max_items
    try:
        if args.vocab:
            services, vocab_items = layout_from_vocab(args.vocab)
            max_items = max_items or vocab_items
        if args.services:
            services = [s.strip() for s in args.services.split(",") if s.strip()]
        with CLUEClient(
            args.server, args.model, signature=args.signature, timeout_s=args.timeout,
            max_message_bytes=args.max_message_bytes, tls_server_name=args.tls_server_name,
            **_tls_files(args),
        ) as client:
            # One version for the whole file: if it is replaced mid-run, the
            # run fails (NOT_FOUND) instead of mixing embeddings of two models.
            client.version = client.served_version()
            if services is None:
                info = client.model_info()  # what embed_jsonl will use; None: --vocab/--services needed
                if info is not None:
                    print(f"model {args.model!r} version {client.version}: {info.summary()}", flush=True)
            summary = embed_jsonl(
                client, args.input, args.out, services, max_items, batch_size=args.batch_size,
                input_name=args.input_name, output=args.output, strict=args.strict,
            )
    except (ValueError, OSError, ServingError) as e:
        print(f"clue embed: {e}", file=sys.stderr)
        return 2
    failed = ""
    if summary["errors"]:
        bad = summary["bad_lines"]
        lines = ", ".join(map(str, summary["first_bad_lines"])) + (", ..." if bad > 5 else "")
        failed = (f"; {summary['errors']} failed"
                  + (f" ({bad} bad input line{'s' if bad != 1 else ''}: {lines})" if bad else "")
                  + f", see {summary['errors_path']}")
    print(
        f"embedded {summary['embedded']} of {summary['users']} users (dim {summary['dim']}, "
        f"model {args.model!r} version {client.version}) "
        f"-> {summary['out']}" + failed
    )
    return 1 if summary["errors"] else 0


def _tls_files(args) -> dict:
    """CLUEClient's TLS arguments from ``--tls-ca/--tls-cert/--tls-key`` (PEM files)."""
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    if args.tls_cert and not args.tls_ca:
        raise ValueError("--tls-cert/--tls-key need --tls-ca (the CA of the server certificate)")
    out = {}
    for name, path in (("root_certificates", args.tls_ca), ("client_cert", args.tls_cert),
                       ("client_key", args.tls_key)):
        if path:
            with open(path, "rb") as f:
                out[name] = f.read()
    return out
