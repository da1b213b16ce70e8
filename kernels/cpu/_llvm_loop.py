"""The counted loop the hand-written LLVM kernels share: values carried in registers (phi nodes)
through ``count`` iterations, as the micro-kernels' accumulators are."""

from llvmlite import ir

_I64 = ir.IntType(64)


def carried_loop(builder, count, starts, step, name):
    """Emit ``for k in range(count): values = step(k, values)`` from ``values = starts`` (no
    iteration when count <= 0) and leave the builder after the loop; return the final values.
    ``step(k, values)`` emits one iteration's body (k: the i64 counter) and returns the new
    values, in the order of ``starts``."""
    pre = builder.block
    body = builder.function.append_basic_block(f"{name}.body")
    done = builder.function.append_basic_block(f"{name}.done")
    builder.cbranch(builder.icmp_signed(">", count, ir.Constant(_I64, 0)), body, done)
    builder.position_at_end(body)
    k = builder.phi(_I64)
    k.add_incoming(ir.Constant(_I64, 0), pre)
    phis = []
    for value in starts:
        phi = builder.phi(value.type)
        phi.add_incoming(value, pre)
        phis.append(phi)
    new = step(k, phis)
    k_next = builder.add(k, ir.Constant(_I64, 1))
    end = builder.block
    k.add_incoming(k_next, end)
    for phi, value in zip(phis, new):
        phi.add_incoming(value, end)
    builder.cbranch(builder.icmp_signed("<", k_next, count), body, done)
    builder.position_at_end(done)
    finals = []
    for start, value in zip(starts, new):   # every phi first: they must head the block
        phi = builder.phi(start.type)
        phi.add_incoming(start, pre)
        phi.add_incoming(value, end)
        finals.append(phi)
    return finals
