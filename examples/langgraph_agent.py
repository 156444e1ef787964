"""A LangGraph agent whose checkpoints live in sophia_memory, stopped for a human's approval
before a tool call and resumed from the checkpoint in a second process.

    python examples/langgraph_agent.py [--path agent.db]

Process 1 runs the agent: the model asks for the tool ``get_weather``, and a review node calls
LangGraph's ``interrupt`` so a human can approve the call. The run stops there; process 1
prints the pending call and exits, closing its memory. The script then starts itself again
as a second process (``--resume``): it opens the same SQLite file, reads the thread's state
from the checkpoint (its messages and the pending tool call), approves the call, and the agent
runs the tool and answers. Needs ``pip install 'sophia-memory[langgraph]'``.

The chat model is scripted (a ``BaseChatModel`` that asks for the tool until it has the
tool's result, then answers with it), so the run needs no API key and always ends the same.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
from typing import Any, Literal

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode
from langgraph.types import Command, interrupt

from sophia_memory import Memory
from sophia_memory.integrations.langgraph import SophiaCheckpointSaver

THREAD = "weather-chat-1"


@tool
def get_weather(city: str) -> str:
    """The current weather in ``city``."""
    return "21 degrees and sunny" if city == "Paris" else "unknown"


class ScriptedModel(BaseChatModel):
    """Asks for ``get_weather`` until a tool result is in the conversation, then answers."""

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: Any = None, **kwargs: Any) -> ChatResult:
        last = messages[-1]
        if isinstance(last, ToolMessage):
            reply = AIMessage(content=f"It is {last.content} in Paris.")
        else:
            reply = AIMessage(content="", tool_calls=[
                {"name": "get_weather", "args": {"city": "Paris"}, "id": "call-1"}])
        return ChatResult(generations=[ChatGeneration(message=reply)])


def build_graph(saver: SophiaCheckpointSaver) -> Any:
    model = ScriptedModel()

    async def agent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await model.ainvoke(state["messages"])]}

    def route(state: MessagesState) -> Literal["review", "__end__"]:
        last = state["messages"][-1]
        return "review" if isinstance(last, AIMessage) and last.tool_calls else END

    def review(state: MessagesState) -> Command[Literal["tools", "agent"]]:
        last = state["messages"][-1]
        assert isinstance(last, AIMessage)  # route() sends only tool-calling replies here
        call = last.tool_calls[0]
        decision = interrupt({"question": "run this tool call?", "tool_call": call})
        if decision == "approve":
            return Command(goto="tools")
        refusal = ToolMessage(content="the user refused", tool_call_id=call["id"])
        return Command(goto="agent", update={"messages": [refusal]})

    builder = StateGraph(MessagesState)
    builder.add_node("agent", agent)
    builder.add_node("review", review)
    builder.add_node("tools", ToolNode([get_weather]))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", route)
    builder.add_edge("tools", "agent")
    return builder.compile(checkpointer=saver)


CONFIG: Any = {"configurable": {"thread_id": THREAD}}


async def first_process(path: str) -> None:
    async with Memory.open(path=path) as mem:
        graph = build_graph(SophiaCheckpointSaver(mem))
        result = await graph.ainvoke(
            {"messages": [HumanMessage(content="What's the weather in Paris?")]}, CONFIG)
        (pending,) = result["__interrupt__"]
        call = pending.value["tool_call"]
        print(f"process 1: interrupted before the tool call {call['name']}({call['args']}); "
              f"{len(result['messages'])} messages in the checkpoint")


async def second_process(path: str) -> None:
    async with Memory.open(path=path) as mem:
        graph = build_graph(SophiaCheckpointSaver(mem))
        state = await graph.aget_state(CONFIG)
        last = state.values["messages"][-1]
        (call,) = last.tool_calls
        print(f"process 2 (pid {os.getpid()}): the checkpoint holds "
              f"{len(state.values['messages'])} messages; next: {state.next}; "
              f"pending tool call: {call['name']}({call['args']})")
        interrupts = [i.value["tool_call"]["name"] for t in state.tasks for i in t.interrupts]
        print(f"process 2: waiting interrupt(s) for {interrupts}; approving")
        result = await graph.ainvoke(Command(resume="approve"), CONFIG)
        print(f"process 2: the tool said {result['messages'][-2].content!r}")
        print(f"final answer: {result['messages'][-1].content}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", help="the SQLite file (default: a temporary one)")
    parser.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.resume:
        asyncio.run(second_process(args.path))
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = args.path or os.path.join(tmp, "agent.db")
        print(f"process 1 (pid {os.getpid()}): checkpoints in {path}")
        asyncio.run(first_process(path))
        subprocess.run([sys.executable, __file__, "--resume", "--path", path], check=True)


if __name__ == "__main__":
    main()
