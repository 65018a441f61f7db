package tracker

import (
	"reflect"
	"testing"
)

var quickFrames = []string{
	`{"type":"Item:claim","request":{"pipeline_type":"brozzler"},"seq":1}`,
	`{"type": "Item:claim", "seq": 1, "request": {"pipeline_type": "brozzler"}}`,
	` { "type" : "System:ping" , "seq" : 7 , "request" : null } `,
	`{"type":"Item:store","seq":3,"request":{"id":"a","result":{"x":[1,"}",{"y":"\"]"}],"z":"\\"},"decode_fields":["full"],"attempt":0,"result_type":"t"}}`,
	`{"type":"Item:claim","seq":1,"seq":2,"type":"Item:finish","request":{"id":"a","id":"b"}}`,
	`{"TYPE":"Item:claim","seq":1}`,
	`{"type":"It\u0065m:claim","seq":1}`,
	`{"type":"Item:claim","seq":1,"request":{"pipeline\u005ftype":"b"}}`,
	`{"type":"Item:claim","seq":1,"request":{"é":1}}`,
	`{"type":"é","seq":1}`,
	`{"type":null,"seq":1}`,
	`{"type":"","seq":1}`,
	`{"type":1,"seq":1}`,
	`{"type":"x","seq":1.5}`,
	`{"type":"x","seq":"1"}`,
	`{"type":"x"}`,
	`{"seq":4}`,
	`{"type":"x","seq":1,"request":[]}`,
	`{"type":"x","seq":1,"request":"s"}`,
	`{"type":"x","seq":1,"request":{}}`,
	`{"type":"x","seq":1,"request":{ }}`,
	`{"v":"20260412.01"}`,
	`{"v": "20260412.01", "p": 2, "num_slots": 1}`,
	`{"v":null,"p":"2"}`,
	`{}`,
	`null`,
	`[]`,
	`{"type":"x","seq":1} x`,
	`{"type":"x","seq":1`,
	`{"type":"x\u0000","seq":1}`,
	"{\"type\":\"x\",\"seq\":1,\"request\":{\"a\":\"\x7f\"}}",
	"{\"type\":\"x\xff\",\"seq\":1}",
	"{\"ty\xffpe\":\"x\",\"seq\":1}",
	`{"type":"x","seq":1,"request":{"a":true,"b":false,"c":null,"d":-1.5e3}}`,
}

func TestQuickDecodeFrameMatchesSlow(t *testing.T) {
	for _, f := range quickFrames {
		for _, first := range []bool{true, false} {
			r1, e1 := DecodeFrame([]byte(f), first)
			r2, e2 := decodeFrameSlow([]byte(f), first)
			if !reflect.DeepEqual(r1, r2) || !reflect.DeepEqual(e1, e2) {
				t.Errorf("%s (first %v):\nquick %+v %+v\nslow  %+v %+v", f, first, r1, e1, r2, e2)
			}
		}
	}
}

func FuzzQuickDecodeFrame(f *testing.F) {
	for _, g := range append(quickFrames, golden...) {
		f.Add([]byte(g), false)
	}
	f.Fuzz(func(t *testing.T, data []byte, first bool) {
		buf := append([]byte(nil), data...)
		r1, e1 := DecodeFrame(buf, first)
		for i := range buf { // the request must not point into the frame (its buffer is reused)
			buf[i] = 'X'
		}
		r2, e2 := decodeFrameSlow(data, first)
		if !reflect.DeepEqual(r1, r2) || !reflect.DeepEqual(e1, e2) {
			t.Fatalf("%q (first %v):\nquick %+v %+v\nslow  %+v %+v", data, first, r1, e1, r2, e2)
		}
	})
}
