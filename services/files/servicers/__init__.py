"""The files service's gRPC servicers, one module per proto service: proto ⇄ domain translation only."""
