"""ChatStepRouter in an LCEL chain: a prompt, the routed chat model, a parser.

Run: python examples/chat_model_chain.py
"""

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from stepgraph import ChatStepRouter


def main() -> None:
    llm = ChatStepRouter(seed=0)
    chain = ChatPromptTemplate.from_messages([("human", "{problem}")]) | llm | StrOutputParser()
    print(chain.invoke({"problem": "Ben has 20 cards. He sells 4. Amy has three times as many cards as Ben. How many cards does Amy have?"}))

    reply = llm.invoke("Eve has 9 shells. She finds 8 more. She sells 5. How many shells does she have?")
    print("answer:", reply.response_metadata["answer"], "| tiers:", [s["tier"] for s in reply.response_metadata["steps"]])
    print("usage:", reply.usage_metadata)
    for chunk in llm.stream("Dan has 31 stamps. He loses 6. He buys 10 more. How many stamps does he have?"):  # one chunk per step
        steps = [v for k, v in chunk.response_metadata.items() if k.startswith("step_")]
        print(repr(chunk.content), "tier", steps[0]["tier"] if steps else "-")


if __name__ == "__main__":
    main()
