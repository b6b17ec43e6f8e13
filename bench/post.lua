-- wrk script: POST /embed with a JSON body (a typical short RAG chunk).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"input_text": "How do I configure the batch size and token budget of the embedding service to reduce latency under load?"}'
